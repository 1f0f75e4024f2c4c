// Runs a probe (services/netreach/probe/main.ts) inside a namespace and collects its JSON result.
import type { ChildProcess } from "node:child_process";
import { spawnIn } from "../../../deploy/testbed/netns.js";

const repoRoot = new URL("../../../", import.meta.url).pathname;
const probeMain = new URL("../probe/main.ts", import.meta.url).pathname;
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

export function startProbe<T>(ns: string, args: string[]): ProbeProcess<T> {
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
      const err = new Error(`probe ${args[0]} in ${ns} exited ${code ?? sig}: ${stderr.trim()}`);
      onFail(err);
      if (code !== 0) return reject(err);
      try {
        resolve(JSON.parse(stdout) as T);
      } catch {
        reject(new Error(`probe ${args[0]} in ${ns} printed no result: ${stderr.trim()}`));
      }
    });
  });
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
