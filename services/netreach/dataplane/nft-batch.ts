// One persistent `nft -i` process per namespace, the nftables twin of IpBatch: a change costs
// a netlink round trip, not a fork. nft acknowledges nothing either, so each apply() ends with
// a barrier that always fails; nft echoes a failing command on stderr after its "Error:" line,
// so seeing the barrier's echo tells that every earlier line ran (stderr is unbuffered and in
// order).
import { type ChildProcess, spawn } from "node:child_process";
import type { ApplyOptions } from "./ip-batch.js";

export class NftBatchError extends Error {
  constructor(
    message: string,
    readonly failures: Array<{ command: string; error: string }> = [],
  ) {
    super(message);
    this.name = "NftBatchError";
  }
}

interface Pending {
  barrier: string;
  failures: Array<{ command: string; error: string }>;
  resolve: () => void;
  reject: (e: Error) => void;
}

const CARET = /^\s*\^+\s*$/;

export class NftBatch {
  private readonly proc: ChildProcess;
  private barriers = 0;
  private readonly queue: Pending[] = [];
  private stderrBuf = "";
  private error: string | null = null;
  private exited: Error | null = null;

  constructor(readonly netns?: string) {
    const [cmd, args] = netns ? ["ip", ["netns", "exec", netns, "nft", "-i"]] : ["nft", ["-i"]];
    this.proc = spawn(cmd, args, { stdio: ["pipe", "ignore", "pipe"] });
    this.proc.stderr?.setEncoding("utf8");
    this.proc.stderr?.on("data", (d: string) => this.onStderr(d));
    this.proc.stdin?.on("error", () => undefined);
    this.proc.on("error", (e) =>
      this.fail(
        new NftBatchError(
          (e as NodeJS.ErrnoException).code === "ENOENT" ? "nft not found: install nftables" : e.message,
        ),
      ),
    );
    this.proc.on("exit", (code, sig) => this.fail(new NftBatchError(`nft -i exited (${code ?? sig})`)));
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

  private onLine(text: string): void {
    if (text.startsWith("Error: ")) {
      this.error = this.error ? `${this.error}; ${text.slice(7)}` : text.slice(7);
      return;
    }
    if (CARET.test(text) || this.error === null) return;
    // The echo of the command that failed.
    const error = this.error;
    this.error = null;
    const head = this.queue[0];
    if (!head) return;
    if (text === head.barrier) {
      this.queue.shift();
      head.resolve();
    } else head.failures.push({ command: text, error });
  }

  /** Runs nft commands (without the leading `nft`) in order; rejects listing failures. */
  async apply(commands: string[], opts: ApplyOptions = {}): Promise<void> {
    if (this.exited) throw this.exited;
    for (const c of commands)
      if (/[\n\r]/.test(c) || c.trim() === "")
        throw new NftBatchError(`invalid nft command ${JSON.stringify(c)}`);
    const barrier = `list table ip nr_barrier_${++this.barriers}`;
    const failures: Array<{ command: string; error: string }> = [];
    await new Promise<void>((resolve, reject) => {
      this.queue.push({ barrier, failures, resolve, reject });
      this.proc.stdin?.write(`${[...commands, barrier].join("\n")}\n`);
    });
    const real = failures.filter((f) => !opts.tolerate?.(f.command, f.error));
    if (real.length)
      throw new NftBatchError(`nft: ${real.map((f) => `'${f.command}': ${f.error}`).join(" | ")}`, real);
  }

  async close(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      this.proc.once("exit", () => resolve());
      this.proc.stdin?.end();
    });
  }
}
