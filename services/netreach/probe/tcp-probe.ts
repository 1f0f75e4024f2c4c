// A TCP connection that must survive a handover: the client sends a numbered 8-byte message
// every interval and the server echoes it; the result says whether every message came back, in
// order, on the same connection.
import { createServer, type Server, Socket } from "node:net";
import { performance } from "node:perf_hooks";

export interface TcpProbeResult {
  sent: number;
  echoed: number;
  inOrder: boolean;
  /** The connection ended or failed before all echoes came back. */
  broken: boolean;
  error?: string;
  /** Longest time between two echoes. */
  maxGapMs: number;
}

export function startEchoServer(port: number, host = "::"): Promise<Server> {
  return new Promise((resolve, reject) => {
    const srv = createServer((c) => {
      c.setNoDelay(true);
      c.on("error", () => c.destroy());
      c.pipe(c);
    });
    srv.once("error", reject);
    srv.listen(port, host, () => resolve(srv));
  });
}

export function runTcpClient(o: {
  target: string;
  port: number;
  count: number;
  intervalMs: number;
  timeoutMs?: number;
  onConnected?: () => void;
}): Promise<TcpProbeResult> {
  return new Promise((resolve) => {
    const sock = new Socket();
    let sent = 0;
    let echoed = 0;
    let inOrder = true;
    let buf = Buffer.alloc(0);
    let last = 0;
    let maxGapMs = 0;
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const finish = (broken: boolean, error?: string) => {
      if (done) return;
      done = true;
      if (timer) clearInterval(timer);
      clearTimeout(deadline);
      sock.destroy();
      resolve({ sent, echoed, inOrder, broken, error, maxGapMs });
    };
    const deadline = setTimeout(
      () => finish(true, "timed out waiting for echoes"),
      o.timeoutMs ?? o.count * o.intervalMs + 10_000,
    );
    sock.setNoDelay(true);
    sock.on("error", (e) => finish(true, e.message));
    sock.on("close", () => finish(echoed < o.count, echoed < o.count ? "connection closed" : undefined));
    sock.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 8) {
        const n = Number(buf.readBigUInt64BE(0));
        buf = buf.subarray(8);
        if (n !== echoed) inOrder = false;
        echoed++;
        const now = performance.now();
        if (last) maxGapMs = Math.max(maxGapMs, now - last);
        last = now;
      }
      if (echoed === o.count) finish(false);
    });
    sock.connect(o.port, o.target, () => {
      o.onConnected?.();
      timer = setInterval(() => {
        if (sent >= o.count) return;
        const m = Buffer.alloc(8);
        m.writeBigUInt64BE(BigInt(sent++));
        sock.write(m);
      }, o.intervalMs);
    });
  });
}
