// Starts a real redis-server on a free port for a test file (append-only file on, so a
// restart keeps the data the way production Redis is configured for vmhop).
import { type ChildProcess, spawn } from "node:child_process";
import { createConnection } from "node:net";
import { freePort } from "../../testbed/ports.js";
import { tempDir } from "../../testbed/temp-dir.js";

export interface RedisHandle {
  url: string;
  port: number;
  dir: string;
  /** Stops redis-server and removes its data. */
  stop(): Promise<void>;
  /** Stops redis-server, keeping its data (restart() starts it again). */
  halt(): Promise<void>;
  restart(): Promise<void>;
  /** kill -9 of redis-server, keeping its data (what it had fsynced; restart() starts it again). */
  kill(): Promise<void>;
}

async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = createConnection({ port, host: "127.0.0.1" }, () => {
        s.end();
        resolve(true);
      });
      s.on("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`redis-server did not listen on ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function startRedis(): Promise<RedisHandle> {
  const port = await freePort();
  const tmp = tempDir("vmhop-redis-");
  let proc: ChildProcess | undefined;
  const launch = async () => {
    proc = spawn(
      "redis-server",
      [
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        tmp.path,
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
      ],
      { stdio: "ignore" },
    );
    await waitForPort(port);
  };
  const stop = async (signal: NodeJS.Signals = "SIGTERM") => {
    const p = proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      p.once("exit", () => resolve());
      p.kill(signal);
    });
  };
  await launch();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    dir: tmp.path,
    stop: async () => {
      await stop();
      tmp.cleanup();
    },
    halt: () => stop(),
    kill: () => stop("SIGKILL"),
    restart: async () => {
      await stop();
      await launch();
    },
  };
}
