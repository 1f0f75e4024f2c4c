// NBD servers a benchmark starts as child processes (vmhop block serve, nbdkit, qemu-nbd),
// each on a free port, ready when an NBD handshake succeeds (nbdinfo), never after a sleep.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { BlockServiceClient } from "../../gen/vmhop/v1/block.js";
import { call } from "../../services/common/grpc/call.js";
import { freePort } from "../../testbed/ports.js";

const run = promisify(execFile);
const vmhopBin = new URL("../../bin/vmhop.js", import.meta.url).pathname;

export interface NbdServer {
  /** nbd://127.0.0.1:PORT/NAME */
  uri: string;
  port: number;
  close(): Promise<void>;
}

/** Resolves once `uri` answers an NBD handshake; rejects if the child dies or time runs out. */
export async function waitNbdReady(uri: string, child?: ChildProcess, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child && child.exitCode !== null)
      throw new Error(`server exited with ${child.exitCode} before ${uri} was ready`);
    try {
      await run("nbdinfo", ["--size", uri], { timeout: 5000 });
      return;
    } catch (err) {
      if (Date.now() > deadline)
        throw new Error(`${uri} not ready after ${timeoutMs} ms: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Asks a child to stop; SIGKILL if it has not exited after 5 s. */
async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, "exit");
  child.kill("SIGTERM");
  const t = setTimeout(() => child.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(t);
}

/** Starts `cmd args` and waits until it serves `name` on `port`. */
export async function startServer(
  cmd: string,
  args: string[],
  port: number,
  name: string,
): Promise<NbdServer> {
  const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr?.on("data", (b: Buffer) => {
    stderr = (stderr + b.toString()).slice(-4000);
  });
  const uri = `nbd://127.0.0.1:${port}/${name}`;
  try {
    await waitNbdReady(uri, child);
  } catch (err) {
    child.kill("SIGKILL");
    throw new Error(`${cmd} ${args.join(" ")}: ${(err as Error).message}\n${stderr}`);
  }
  return { uri, port, close: () => stopChild(child) };
}

/**
 * A running vmhop block-server with no export of its own, used the way the control-plane
 * uses one: an export is created over gRPC for each run and removed after it, while the
 * process (and its warmed-up JIT) lives on, as a host's block-server does.
 */
export interface VmhopDaemon {
  target(image: string, name: string): Promise<NbdServer>;
  proxy(upstream: string, cache: string, name: string): Promise<NbdServer>;
  close(): Promise<void>;
}

export async function vmhopDaemon(): Promise<VmhopDaemon> {
  const port = await freePort();
  const grpcPort = await freePort();
  const args = [
    vmhopBin,
    "block",
    "serve",
    "--listen",
    `127.0.0.1:${port}`,
    "--grpc",
    `127.0.0.1:${grpcPort}`,
    // A benchmark's exports are its own, for one run: nothing recorded for a restart.
    "--state-dir",
    "none",
  ];
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr?.on("data", (b: Buffer) => {
    stderr = (stderr + b.toString()).slice(-4000);
  });
  // `serve` prints one JSON line with "ready" once it listens.
  const lines = createInterface({ input: child.stdout! });
  const ready = new Promise<void>((resolve, reject) => {
    lines.on("line", (l) => {
      if (l.includes('"ready":true')) resolve();
    });
    child.once("exit", (code) => reject(new Error(`vmhop block serve exited with ${code}: ${stderr}`)));
  });
  const timeout = setTimeout(() => child.kill("SIGKILL"), 30_000);
  try {
    await ready;
  } finally {
    clearTimeout(timeout);
  }
  child.stdout?.resume();
  const client = new BlockServiceClient(`127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure());
  const add = async (name: string, source: Parameters<BlockServiceClient["createExport"]>[0]["source"]) => {
    await call(client, "createExport", { name, source, readOnly: false, description: "", fencingToken: 0 });
    const uri = `nbd://127.0.0.1:${port}/${name}`;
    await waitNbdReady(uri, child);
    return {
      uri,
      port,
      close: () =>
        call(client, "removeExport", { name, fencingToken: 0, discardLocalCopy: false }).then(
          () => undefined,
        ),
    };
  };
  return {
    target: (image, name) => add(name, { $case: "target", value: { imagePath: image, sizeBytes: 0 } }),
    proxy: (upstream, cache, name) =>
      add(name, {
        $case: "proxy",
        value: {
          upstreamUrl: upstream,
          cachePath: cache,
          blockSize: 0,
          startBackgroundCopy: false,
          rateLimitBytesPerSecond: 0,
          upstreamControl: "",
          autoPromote: false,
        },
      }),
    close: async () => {
      client.close();
      await stopChild(child);
    },
  };
}

export async function vmhopTarget(image: string, name = "disk0"): Promise<NbdServer> {
  const port = await freePort();
  const args = [
    vmhopBin,
    "block",
    "serve",
    "--target",
    image,
    "--name",
    name,
    "--listen",
    `127.0.0.1:${port}`,
    "--grpc",
    "none",
    "--state-dir",
    "none",
  ];
  return startServer(process.execPath, args, port, name);
}

export async function vmhopProxy(upstream: string, cache: string, name = "disk0"): Promise<NbdServer> {
  const port = await freePort();
  const args = [vmhopBin, "block", "serve", "--proxy", upstream, "--cache", cache, "--name", name];
  args.push("--listen", `127.0.0.1:${port}`, "--grpc", "none", "--state-dir", "none");
  return startServer(process.execPath, args, port, name);
}

export async function nbdkitFile(image: string, name = "disk0"): Promise<NbdServer> {
  const port = await freePort();
  return startServer("nbdkit", ["-f", "-i", "127.0.0.1", "-p", String(port), "file", image], port, name);
}

/** nbdkit's cow filter over its nbd plugin: a pass-through proxy that keeps no local copy of reads. */
export async function nbdkitCow(upstream: string, name = "disk0"): Promise<NbdServer> {
  const port = await freePort();
  const args = ["-f", "-i", "127.0.0.1", "-p", String(port), "--filter=cow", "nbd", `uri=${upstream}`];
  return startServer("nbdkit", args, port, name);
}

export async function qemuNbd(image: string, name = "disk0"): Promise<NbdServer> {
  const port = await freePort();
  const args = ["-f", "raw", "-x", name, "-b", "127.0.0.1", "-p", String(port), "-t", "--shared=8", image];
  return startServer("qemu-nbd", args, port, name);
}
