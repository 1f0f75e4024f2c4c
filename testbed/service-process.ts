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

const STDERR_TAIL = 64 * 1024;

export async function startService(o: ServiceOptions): Promise<ServiceProcess> {
  const argv = [process.execPath, vmhop, ...o.args];
  const child = o.netns
    ? spawn("ip", ["netns", "exec", o.netns, ...argv], { stdio: ["ignore", "pipe", "pipe"], env: o.env })
    : spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "pipe"], env: o.env });
  let tail = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => {
    tail = (tail + d).slice(-STDERR_TAIL);
  });
  const exited = new Promise<number | null>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
    else child.once("exit", (code) => resolve(code));
  });
  const lines = createInterface({ input: child.stdout! });
  let timer: NodeJS.Timeout | undefined;
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const fail = (why: string) => reject(new Error(`${o.name}: ${why}\n${tail.slice(-4000)}`));
    timer = setTimeout(() => fail(`no ready line within ${o.readyMs ?? 30_000} ms`), o.readyMs ?? 30_000);
    lines.on("line", (l) => {
      if (!l.startsWith("{")) return;
      try {
        resolve(JSON.parse(l) as Record<string, unknown>);
      } catch {
        fail(`unreadable ready line ${JSON.stringify(l)}`);
      }
    });
    child.once("exit", (code, signal) => fail(`exited (${code ?? signal}) before it was ready`));
    child.once("error", (err) => fail(err.message));
  }).catch(async (err) => {
    clearTimeout(timer);
    child.kill("SIGKILL");
    await exited;
    throw err;
  });
  clearTimeout(timer);
  lines.removeAllListeners("line");
  child.stdout!.resume(); // later stdout is not read; never let the pipe fill
  return {
    name: o.name,
    child,
    ready,
    grpc: typeof ready.grpc === "string" ? ready.grpc : "",
    stderr: () => tail,
    async stop(graceMs = 10_000) {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), graceMs);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}
