// One persistent `ip [-n NS] -force -batch -` process per namespace: a change costs a netlink
// round trip (~40 µs) instead of a fork (2-15 ms). The barrier is a `link show` of a device that
// never exists; ip reports every failure as "Command failed -:N" (N = input line), after the
// tool's own message lines.
import { BatchProcess } from "./batch-process.js";

const FAILED = /^Command failed -:(\d+)$/;

export class IpBatch extends BatchProcess {
  /** `options`: global ip options for every line, e.g. ["-6"] (batch lines take none). */
  constructor(
    readonly netns?: string,
    options: string[] = [],
  ) {
    super(
      `ip -batch${netns ? ` in ${netns}` : ""}`,
      "ip",
      [...(netns ? ["-n", netns] : []), ...options, "-force", "-batch", "-"],
      "ip not found: install iproute2",
    );
  }

  protected barrierFor(_line: number): string {
    return "link show dev nr-barrier-0";
  }

  protected onLine(text: string): void {
    const m = FAILED.exec(text);
    if (!m) {
      this.recent.push(text);
      return;
    }
    const n = Number(m[1]);
    const head = this.head;
    const msg = this.recent.join("; ");
    this.recent = [];
    if (!head) return;
    if (n === head.firstLine + head.commands.length) this.barrierReached();
    else this.failed(head.commands[n - head.firstLine] ?? `line ${n}`, msg);
  }
}
