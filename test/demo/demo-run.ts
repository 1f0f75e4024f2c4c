// `vmhop demo` as a user runs it, for the demo tests: the process with its output collected,
// and what a run may have left behind.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";

const bin = new URL("../../bin/vmhop.js", import.meta.url).pathname;

export interface Run {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | string>;
}

export function demo(args: string[]): Run {
  const child = spawn(process.execPath, [bin, "demo", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => {
    out += d;
  });
  child.stderr!.setEncoding("utf8").on("data", (d: string) => {
    err = (err + d).slice(-200_000);
  });
  const exited = new Promise<number | string>((resolve) =>
    child.once("exit", (code, signal) => resolve(code ?? signal ?? -1)),
  );
  return { child, stdout: () => out, stderr: () => err, exited };
}

/** What a demo run (pid) may have left: its namespaces, processes still holding its folder. */
export function leftovers(pid: number): string[] {
  const ns = execFileSync("ip", ["netns", "list"], { encoding: "utf8" })
    .split("\n")
    .filter((l) => l.startsWith(`nr-demo-${pid}-`));
  const procs = execFileSync("ps", ["-eo", "pid,args"], { encoding: "utf8" })
    .split("\n")
    .filter(
      (l) =>
        /qemu-system|vmhop\.js (block|page|netreach|control|placement)/.test(l) && l.includes("vmhop-demo-"),
    );
  return [...ns, ...procs];
}
