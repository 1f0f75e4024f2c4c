// Runs a probe (services/netreach/probe/main.ts) inside a namespace and collects its JSON result.
import type { ChildProcess } from "node:child_process";
import type { PingRecord } from "../../services/netreach/probe/analysis.js";
import { spawnIn } from "../netns.js";

const repoRoot = new URL("../../", import.meta.url).pathname;
const probeMain = new URL("../../services/netreach/probe/main.ts", import.meta.url).pathname;
/** nice value for the test bed's instruments and emulated WAN (root may raise priority). */
export const PRIORITY = process.getuid?.() === 0 ? "-10" : "0";

export interface ProbeProcess<T> {
  /** Resolves once the probe is sending or listening. */
  ready: Promise<void>;
  /** The probe's JSON result (long-running servers never produce one). */
  result: Promise<T>;
  proc: ChildProcess;
  kill(): void;
}

/**
 * Starts a probe in `ns`. Nothing waits on it unbounded: if it is not ready within 30 s, or has
 * not finished within `limitMs` (default 2 min; servers are killed by their owner), it is
 * killed and `ready`/`result` reject naming the probe and the limit.
 */
export function startProbe<T>(ns: string, args: string[], limitMs = 120_000): ProbeProcess<T> {
  // Raised priority: the instrument's own scheduling on a loaded machine must not show up as
  // silences (vmhop's own processes keep the default priority).
  const proc = spawnIn(
    ns,
    "nice",
    ["-n", PRIORITY, process.execPath, "--import", "tsx", probeMain, ...args],
    {
      cwd: repoRoot,
    },
  );
  let stdout = "";
  let stderr = "";
  let onReady: () => void = () => {};
  let onFail: (e: Error) => void = () => {};
  const ready = new Promise<void>((resolve, reject) => {
    onReady = resolve;
    onFail = reject;
  });
  proc.stdout?.setEncoding("utf8").on("data", (d: string) => {
    stdout += d;
  });
  proc.stderr?.setEncoding("utf8").on("data", (d: string) => {
    stderr += d;
    if (/^ready$/m.test(stderr)) onReady();
  });
  const result = new Promise<T>((resolve, reject) => {
    proc.on("exit", (code, sig) => {
      const err = new Error(overdue || `probe ${args[0]} in ${ns} exited ${code ?? sig}: ${stderr.trim()}`);
      onFail(err);
      if (code !== 0) return reject(err);
      try {
        resolve(JSON.parse(stdout) as T);
      } catch {
        reject(new Error(`probe ${args[0]} in ${ns} printed no result: ${stderr.trim()}`));
      }
    });
  });
  let overdue = "";
  const timer = setTimeout(() => {
    overdue = `probe ${args.join(" ")} in ${ns} did not finish within ${limitMs} ms`;
    proc.kill("SIGKILL");
  }, limitMs);
  timer.unref();
  const readyTimer = setTimeout(() => {
    onFail(new Error(`probe ${args[0]} in ${ns} was not ready within 30000 ms: ${stderr.trim()}`));
    proc.kill("SIGKILL");
  }, 30_000);
  readyTimer.unref();
  ready.then(
    () => clearTimeout(readyTimer),
    () => clearTimeout(readyTimer),
  );
  proc.on("exit", () => clearTimeout(timer));
  result.catch(() => undefined);
  ready.catch(() => undefined);
  return {
    ready,
    result,
    proc,
    kill: () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    },
  };
}

export interface PingOptions {
  intervalMs?: number;
  waitMs?: number;
}

/**
 * A continuous ping from `ns` to `to`: `count` echoes `intervalMs` apart (default 10), waiting
 * `waitMs` for the last replies (the probe's default when absent).
 */
export function startPing(
  ns: string,
  to: string,
  count: number,
  opts: PingOptions = {},
): ProbeProcess<PingRecord[]> {
  const wait = opts.waitMs === undefined ? [] : ["--wait-ms", String(opts.waitMs)];
  return startProbe<PingRecord[]>(ns, [
    "ping",
    "--to",
    to,
    "--count",
    String(count),
    "--interval-ms",
    String(opts.intervalMs ?? 10),
    ...wait,
  ]);
}
