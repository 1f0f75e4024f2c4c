// Test helper: a TCP hop standing for the WAN link between two page-servers, which a test
// can break (existing connections cut, new ones refused) and restore.
import { connect, createServer, type Server, type Socket } from "node:net";

export class Link {
  private server: Server | undefined;
  private readonly live = new Set<Socket>();
  private down = false;
  address = "";

  constructor(private readonly target: string) {}

  async open(): Promise<string> {
    const [host, port] = this.target.split(":");
    this.server = createServer((a) => {
      if (this.down) return a.destroy();
      const b = connect(Number(port), host);
      for (const s of [a, b]) {
        this.live.add(s);
        s.on("error", () => {});
        s.once("close", () => {
          this.live.delete(s);
          a.destroy();
          b.destroy();
        });
      }
      a.pipe(b);
      b.pipe(a);
    });
    await new Promise<void>((r) => this.server!.listen(0, "127.0.0.1", r));
    const a = this.server.address();
    this.address = typeof a === "object" && a ? `127.0.0.1:${a.port}` : "";
    return this.address;
  }

  /** Cuts every connection and refuses new ones until restore(). */
  break(): void {
    this.down = true;
    for (const s of this.live) s.destroy();
  }

  restore(): void {
    this.down = false;
  }

  async close(): Promise<void> {
    this.break();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}
