// Runs a host tool for the guest build; a failure says which tool, why, and what to try.
import { spawn } from "node:child_process";

export class GuestBuildError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GuestBuildError";
  }
}

export interface RunOptions {
  cwd?: string;
  input?: Buffer | string;
  hint?: string;
}

export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    const fail = (why: string) => {
      const detail = Buffer.concat(err).toString().trim().split("\n").slice(-6).join("\n");
      const hint = opts.hint ? ` (${opts.hint})` : "";
      reject(new GuestBuildError(`${cmd} ${args.join(" ")} ${why}${hint}${detail ? `:\n${detail}` : ""}`));
    };
    child.on("error", (e: NodeJS.ErrnoException) =>
      fail(e.code === "ENOENT" ? "failed: command not found" : `failed: ${e.message}`),
    );
    child.on("close", (code, signal) => {
      if (code === 0) resolve(Buffer.concat(out));
      else fail(signal ? `was killed by ${signal}` : `exited with ${code}`);
    });
    // A tool that exits before reading all its input breaks the pipe: its exit status and
    // stderr (reported on "close") say why, not an unhandled EPIPE.
    child.stdin.on("error", () => {});
    child.stdin.end(opts.input ?? "");
  });
}
