// A vmhop service as a child process, optionally inside a network namespace: started with its
// arguments, its first JSON stdout line (every `vmhop … serve` prints one when ready) parsed, the
// tail of its stderr kept for error messages, stopped with SIGTERM (SIGKILL if it lingers).
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";

const vmhop = new URL("../bin/vmhop.js", import.meta.url).pathname;

export interface ServiceProcess {
  readonly name: string;
  readonly child: ChildProcess;
  /** The ready line. */
  readonly ready: Record<string, unknown>;
  /** The last lines of stderr (the service's JSON log). */
  stderr(): string;
  /** The gRPC address its ready line names ("" if none). */
  readonly grpc: string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with its exit code once it exited (null: a signal ended it). */
  stop(graceMs?: number): Promise<number | null>;
}

export interface ServiceOptions {
  /** A label for messages, e.g. "s1 page-server". */
  name: string;
  /** `vmhop` arguments, e.g. ["page", "serve", "--listen", …]. */
  args: string[];
  /** Run inside this network namespace (`ip netns exec`). */
  netns?: string;
  readyMs?: number;
  env?: NodeJS.ProcessEnv;
}

const STDERR_TAIL = 256 * 1024;

/** A service process as it starts: its ready line and its exit still to come. */
export interface SpawnedService {
  readonly name: string;
  readonly child: ChildProcess;
  /** Its first JSON stdout line; rejects if it exits (or errs) first. No time limit of its own. */
  readonly ready: Promise<Record<string, unknown>>;
  /** Its exit code, or the signal's name that ended it. */
  readonly exited: Promise<number | string>;
  /** The last 256 KiB of stderr (the service's JSON log). */
  stderr(): string;
  /** Signals it (SIGTERM by default, SIGKILL after `graceMs`) and resolves once it exited. */
  stop(graceMs?: number, signal?: NodeJS.Signals): Promise<number | string>;
}

/** Starts a service without waiting for it (tests of how a start goes use this). */
export function spawnService(o: ServiceOptions): SpawnedService {
  const argv = [process.execPath, vmhop, ...o.args];
  const child = o.netns
    ? spawn("ip", ["netns", "exec", o.netns, ...argv], { stdio: ["ignore", "pipe", "pipe"], env: o.env })
    : spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "pipe"], env: o.env });
  let tail = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => {
    tail = (tail + d).slice(-STDERR_TAIL);
  });
  const exited = new Promise<number | string>((resolve) =>
    child.once("exit", (code, signal) => resolve(code ?? signal ?? -1)),
  );
  const ready = new Promise<Record<string, unknown>>((resolve, reject) => {
    const fail = (why: string) => reject(new Error(`${o.name}: ${why}\n${tail.slice(-4000)}`));
    const lines = createInterface({ input: child.stdout! });
    lines.on("line", (l) => {
      if (!l.startsWith("{")) return;
      lines.removeAllListeners("line"); // later stdout is read and dropped: the pipe never fills
      try {
        resolve(JSON.parse(l) as Record<string, unknown>);
      } catch {
        fail(`unreadable ready line ${JSON.stringify(l)}`);
      }
    });
    void exited.then((code) => fail(`exited (${code}) before it was ready`));
    child.once("error", (err) => fail(err.message));
  });
  ready.catch(() => {}); // observed by whoever awaits it
  return {
    name: o.name,
    child,
    ready,
    exited,
    stderr: () => tail,
    async stop(graceMs = 10_000, signal: NodeJS.Signals = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const t = setTimeout(() => child.kill("SIGKILL"), graceMs);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}

/** Starts a service and waits (bounded by `readyMs`, default 30 s) for its ready line. */
export async function startService(o: ServiceOptions): Promise<ServiceProcess> {
  const s = spawnService(o);
  const limit = o.readyMs ?? 30_000;
  let timer: NodeJS.Timeout | undefined;
  const ready = await Promise.race([
    s.ready,
    new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${o.name}: no ready line within ${limit} ms\n${s.stderr().slice(-4000)}`)),
        limit,
      );
    }),
  ])
    .catch(async (err) => {
      await s.stop(0, "SIGKILL");
      throw err;
    })
    .finally(() => clearTimeout(timer));
  return {
    name: o.name,
    child: s.child,
    ready,
    grpc: typeof ready.grpc === "string" ? ready.grpc : "",
    stderr: s.stderr,
    async stop(graceMs = 10_000) {
      const code = await s.stop(graceMs);
      return typeof code === "number" ? code : null;
    },
  };
}
