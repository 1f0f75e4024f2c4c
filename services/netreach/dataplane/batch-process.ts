// A long-lived command interpreter (`ip -batch -`, `nft -i`) fed line by line: a change costs a
// netlink round trip instead of a fork. Neither tool acknowledges commands, so each apply() ends
// with a barrier, a command that always fails; its error on stderr (unbuffered, the same pipe as
// real errors, so in order) tells that every earlier line ran. Subclasses parse their tool's
// error lines and call failed() / barrierReached().
import { type ChildProcess, spawn } from "node:child_process";

export interface Failure {
  command: string;
  error: string;
}

export class BatchError extends Error {
  constructor(
    message: string,
    readonly failures: Failure[] = [],
  ) {
    super(message);
    this.name = "BatchError";
  }
}

export interface ApplyOptions {
  /** Commands whose failure is expected and ignored (e.g. deleting what may be absent). */
  tolerate?: (command: string, error: string) => boolean;
}

export interface Pending {
  /** Input line number (1-based, over the process's life) of commands[0]. */
  firstLine: number;
  commands: string[];
  barrier: string;
  failures: Failure[];
  resolve: () => void;
  reject: (e: Error) => void;
}

export abstract class BatchProcess {
  private readonly proc: ChildProcess;
  private lines = 0;
  private readonly queue: Pending[] = [];
  private stderrBuf = "";
  private exited: Error | null = null;
  /** Recent stderr lines that were not barrier errors (for the exit message). */
  protected recent: string[] = [];

  constructor(
    /** e.g. "ip -batch in NS", for messages. */
    private readonly what: string,
    cmd: string,
    args: string[],
    private readonly missing: string,
  ) {
    this.proc = spawn(cmd, args, { stdio: ["pipe", "ignore", "pipe"] });
    this.proc.stderr?.setEncoding("utf8");
    this.proc.stderr?.on("data", (d: string) => this.onStderr(d));
    this.proc.stdin?.on("error", () => undefined);
    this.proc.on("error", (e) =>
      this.fail(new BatchError((e as NodeJS.ErrnoException).code === "ENOENT" ? this.missing : e.message)),
    );
    this.proc.on("exit", (code, sig) =>
      this.fail(
        new BatchError(
          `${this.what} exited (${code ?? sig})${this.recent.length ? `: ${this.recent.join("; ")}` : ""}`,
        ),
      ),
    );
  }

  /** The barrier command for the apply whose barrier sits on input line `line`. */
  protected abstract barrierFor(line: number): string;

  /** One stderr line of the tool. */
  protected abstract onLine(text: string): void;

  /** The oldest apply still waiting for its barrier. */
  protected get head(): Pending | undefined {
    return this.queue[0];
  }

  protected barrierReached(): void {
    this.queue.shift()?.resolve();
    this.recent = [];
  }

  protected failed(command: string, error: string): void {
    this.head?.failures.push({ command, error });
  }

  private fail(e: Error): void {
    if (!this.exited) this.exited = e;
    for (const p of this.queue.splice(0)) p.reject(this.exited);
  }

  private onStderr(data: string): void {
    this.stderrBuf += data;
    let nl = this.stderrBuf.indexOf("\n");
    while (nl >= 0) {
      this.onLine(this.stderrBuf.slice(0, nl));
      this.stderrBuf = this.stderrBuf.slice(nl + 1);
      nl = this.stderrBuf.indexOf("\n");
    }
  }

  /** Runs commands (the tool's syntax, one per line) in order; rejects listing the failures. */
  async apply(commands: string[], opts: ApplyOptions = {}): Promise<void> {
    if (this.exited) throw this.exited;
    for (const c of commands)
      if (/[\n\r]/.test(c) || c.trim() === "")
        throw new BatchError(`${this.what}: invalid command ${JSON.stringify(c)}`);
    const firstLine = this.lines + 1;
    this.lines += commands.length + 1;
    const barrier = this.barrierFor(this.lines);
    const failures: Failure[] = [];
    await new Promise<void>((resolve, reject) => {
      this.queue.push({ firstLine, commands, barrier, failures, resolve, reject });
      this.proc.stdin?.write(`${[...commands, barrier].join("\n")}\n`);
    });
    const real = failures.filter((f) => !opts.tolerate?.(f.command, f.error));
    if (real.length)
      throw new BatchError(
        `${this.what}: ${real.map((f) => `'${f.command}': ${f.error}`).join(" | ")}`,
        real,
      );
  }

  async close(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      this.proc.once("exit", () => resolve());
      this.proc.stdin?.end();
    });
  }
}

/** Tolerates "already there" / "not there" errors, for idempotent add and delete. */
export const idempotent = (_c: string, error: string): boolean =>
  /File exists|No such file|No such process|Cannot find device|does not exist|not found/i.test(error);
