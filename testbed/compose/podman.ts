// podman and podman-compose as the compose test bed runs them: this repository's
// containers.conf (runc, cgroupfs, no default ulimits; nothing system-wide is changed), each
// command's output kept in a log file, and a failure reported with the command and its tail.
import { type ChildProcess, spawn } from "node:child_process";
import { appendFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const repoRoot = fileURLToPath(new URL("../..", import.meta.url));
export const containersConf = fileURLToPath(new URL("../../deploy/podman/containers.conf", import.meta.url));

/** The environment every podman call gets. */
export function podmanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return { ...process.env, CONTAINERS_CONF: containersConf, ...extra };
}

export interface RunResult {
  code: number;
  out: string;
  err: string;
}

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Appends the command and its output here. */
  log?: string;
  /** Resolve with a non-zero exit instead of rejecting. */
  allowFail?: boolean;
}

const TAIL = 4000;
const running = new Set<ChildProcess>();

/** SIGTERM to every command still running (an interrupted bed stops its `up` before its `down`). */
export function stopRunning(): void {
  for (const c of running) c.kill("SIGTERM");
}

/** Runs a command to its end; rejects on a non-zero exit (unless allowFail) naming it with its output's tail. */
export function run(cmd: string, args: string[], o: RunOptions = {}): Promise<RunResult> {
  const line = [cmd, ...args].map((a) => (/[\s"']/.test(a) ? JSON.stringify(a) : a)).join(" ");
  if (o.log) appendFileSync(o.log, `\n$ ${line}\n`);
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: o.cwd ?? repoRoot,
      env: o.env ?? podmanEnv(),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    const keep = (which: "out" | "err") => (d: Buffer) => {
      const s = d.toString("utf8");
      if (o.log) appendFileSync(o.log, s);
      if (which === "out") out += s;
      else err = (err + s).slice(-64 * 1024);
    };
    child.stdout.on("data", keep("out"));
    child.stderr.on("data", keep("err"));
    child.once("error", (e) => reject(new Error(`${cmd}: ${e.message}`)));
    running.add(child);
    child.once("close", (code) => {
      running.delete(child);
      const r = { code: code ?? -1, out, err };
      if (r.code === 0 || o.allowFail) resolve(r);
      else
        reject(
          new Error(
            `\`${line}\` exited with ${r.code}${o.log ? ` (log: ${o.log})` : ""}:\n${(out + err).slice(-TAIL).trimEnd()}`,
          ),
        );
    });
  });
}

export function podman(args: string[], o: RunOptions = {}): Promise<RunResult> {
  return run("podman", args, o);
}
