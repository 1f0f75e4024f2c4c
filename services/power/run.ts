// Runs one power command (ipmitool, a user's script) to its end: its output, or a PowerError
// naming the command, its exit and the tail of its stderr, with the password taken out.
import { spawn } from "node:child_process";
import { PowerError, redact } from "./driver.js";

export interface RunOptions {
  /** Added to the environment (how a password reaches the command: never on its command line). */
  env?: Record<string, string>;
  /** The password to keep out of any message. */
  secret?: string;
  timeoutMs?: number;
  /** How messages name the command (default: argv[0]). */
  label?: string;
}

/** argv[0] found on PATH; resolves with stdout on exit 0. */
export function runCommand(argv: string[], o: RunOptions = {}): Promise<string> {
  const what = o.label ?? argv[0];
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), {
      env: { ...process.env, ...o.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      out = (out + d).slice(-65536);
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      err = (err + d).slice(-4096);
    });
    const fail = (why: string, kind: "unavailable" | "deadline" = "unavailable") =>
      reject(new PowerError(kind, redact(`${what}: ${why}`, o.secret)));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      fail(`no answer within ${o.timeoutMs} ms`, "deadline");
    }, o.timeoutMs ?? 60_000);
    child.once("error", (e) => {
      clearTimeout(timer);
      fail((e as NodeJS.ErrnoException).code === "ENOENT" ? "not found on PATH" : e.message);
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve(out);
      const tail = (err.trim() || out.trim()).split("\n").slice(-3).join(" / ");
      fail(`exited ${code ?? signal}${tail ? `: ${tail}` : ""}`);
    });
  });
}

/** A user's shell command (`sh -c`), as for the command and wol drivers. */
export function runShell(command: string, o: RunOptions = {}): Promise<string> {
  return runCommand(["sh", "-c", command], { label: JSON.stringify(command), ...o });
}
