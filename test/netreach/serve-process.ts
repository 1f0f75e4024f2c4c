// Runs `vmhop netreach … serve` as a child process and waits for its JSON ready line.
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { within } from "../helpers/wait.js";

const bin = join(new URL("../..", import.meta.url).pathname, "bin/vmhop.js");

export interface Served {
  child: ChildProcess;
  ready: Record<string, unknown> & { grpc: string };
  stderr: () => string;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>;
}

export async function serve(args: string[]): Promise<Served> {
  const child = spawn(bin, ["netreach", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => {
    err = (err + d).slice(-20_000);
  });
  child.stdout!.setEncoding("utf8");
  let out = "";
  const line = await within(
    new Promise<string>((resolve, reject) => {
      child.stdout!.on("data", (d: string) => {
        out += d;
        if (out.includes("\n")) resolve(out.split("\n")[0]);
      });
      child.once("exit", (code) =>
        reject(new Error(`netreach ${args[0]} serve exited with ${code}: ${err}`)),
      );
    }),
    30_000,
    `the ready line of netreach ${args[0]} serve`,
  ).catch((e) => {
    child.kill("SIGKILL");
    throw e;
  });
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  return {
    child,
    ready: JSON.parse(line),
    stderr: () => err,
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      return exited;
    },
  };
}
