// Live serial console: connects to QEMU's serial socket, splits lines, stamps each with the
// host time, and reports heartbeats. QEMU also writes everything to the serial log file.
import { EventEmitter } from "node:events";
import { connect, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { splitLines } from "../lines.js";
import { type Heartbeat, HeartbeatTracker, parseHeartbeat } from "./heartbeat.js";

type Events = {
  line: [line: string, atMs: number];
  heartbeat: [hb: Heartbeat, atMs: number];
  close: [];
};

export class SerialConsole extends EventEmitter<Events> {
  readonly tracker = new HeartbeatTracker();
  private rest: Buffer = Buffer.alloc(0);
  private predecessor: SerialConsole | undefined;
  private socket: Socket | undefined;
  private ended = false;
  /** The latest lines, for error messages. */
  readonly recent: string[] = [];

  constructor(private readonly path: string) {
    super();
  }

  /** Connects, retrying while QEMU has not created the socket yet. */
  async open(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        this.socket = await new Promise<Socket>((resolve, reject) => {
          const s = connect(this.path);
          s.once("connect", () => {
            s.off("error", reject);
            resolve(s);
          });
          s.once("error", reject);
        });
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if ((code !== "ENOENT" && code !== "ECONNREFUSED") || Date.now() >= deadline)
          throw new Error(`cannot connect to serial socket ${this.path}: ${(err as Error).message}`);
        await sleep(25);
      }
    }
    this.socket.on("data", (d: Buffer) => this.onData(d));
    this.socket.on("error", () => {});
    this.socket.on("close", () => {
      this.ended = true;
      this.emit("close");
    });
  }

  /**
   * Makes this console the continuation of `prev` (the same guest before a migration): the
   * heartbeat stats carry over, so a counter break or gap across the switch-over shows, and a
   * line the guest was half-way through writing at the switch is completed here.
   */
  continueFrom(prev: SerialConsole): void {
    this.predecessor = prev;
    this.tracker.stats = { ...prev.tracker.stats };
  }

  get closed(): boolean {
    return this.ended;
  }

  close(): void {
    this.socket?.destroy();
  }

  /** Sends bytes to the guest (its serial port's input); resolves once they are handed to the socket. */
  write(data: Uint8Array): Promise<void> {
    const s = this.socket;
    if (!s || this.ended) return Promise.reject(new Error("the serial console is closed"));
    return new Promise((resolve, reject) => s.write(data, (err) => (err ? reject(err) : resolve())));
  }

  /** Resolves with the first heartbeat satisfying `pred`; rejects on timeout or console close. */
  waitForHeartbeat(pred: (hb: Heartbeat) => boolean, timeoutMs: number): Promise<Heartbeat> {
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.off("heartbeat", onHb);
        this.off("close", onClose);
      };
      const onHb = (hb: Heartbeat) => {
        if (pred(hb)) {
          done();
          resolve(hb);
        }
      };
      const onClose = () => {
        done();
        reject(
          new Error(
            `serial console closed while waiting for a heartbeat; last lines:\n${this.recent.join("\n")}`,
          ),
        );
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(`no matching heartbeat within ${timeoutMs} ms; last lines:\n${this.recent.join("\n")}`),
        );
      }, timeoutMs);
      if (this.ended) return onClose();
      this.on("heartbeat", onHb);
      this.on("close", onClose);
    });
  }

  private onData(chunk: Buffer): void {
    const now = Date.now();
    if (this.predecessor) {
      // The tail is read at the first byte the new host prints: by then the old one has stopped.
      this.rest = Buffer.concat([this.predecessor.rest, this.rest]);
      this.tracker.stats = { ...this.predecessor.tracker.stats };
      this.predecessor = undefined;
    }
    const { lines, rest } = splitLines(Buffer.concat([this.rest, chunk]));
    this.rest = rest;
    for (const line of lines) {
      this.recent.push(line);
      if (this.recent.length > 20) this.recent.shift();
      this.tracker.observeLine(line);
      this.emit("line", line, now);
      const hb = parseHeartbeat(line);
      if (hb) {
        this.tracker.observe(hb, now);
        this.emit("heartbeat", hb, now);
      }
    }
  }
}
