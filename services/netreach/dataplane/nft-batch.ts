// One persistent `nft -i` process per namespace, the nftables twin of IpBatch. The barrier lists
// a table that never exists; nft reports a failure as "Error: …", then echoes the failing
// command, then a caret line under the culprit.
import { BatchProcess } from "./batch-process.js";

const CARET = /^\s*\^+\s*$/;

export class NftBatch extends BatchProcess {
  private error: string | null = null;

  constructor(readonly netns?: string) {
    super(
      `nft${netns ? ` in ${netns}` : ""}`,
      netns ? "ip" : "nft",
      netns ? ["netns", "exec", netns, "nft", "-i"] : ["-i"],
      "nft not found: install nftables",
    );
  }

  protected barrierFor(line: number): string {
    return `list table ip nr_barrier_${line}`;
  }

  protected onLine(text: string): void {
    if (text.startsWith("Error: ")) {
      this.error = this.error ? `${this.error}; ${text.slice(7)}` : text.slice(7);
      return;
    }
    if (CARET.test(text)) return;
    if (this.error === null) {
      this.recent.push(text);
      return;
    }
    // The echo of the command that failed.
    const error = this.error;
    this.error = null;
    if (text === this.head?.barrier) this.barrierReached();
    else this.failed(text, error);
  }
}
