// Watches one incoming migration's relayed connections for its post-copy faults: per
// connection, the bytes to the destination QEMU go through the RAM stream codec (the main
// stream or the urgent lane, told apart by their first byte) and QEMU's bytes back through
// the return-path codec; the fault timer pairs requests with pages. It never disturbs the
// relay: a stream it cannot follow stops the observing for that migration, said once in the
// log. A post-copy recovery re-sends pages on new connections: timing stops there too.
import type { Logger } from "../../common/log.js";
import type { RelayTap } from "../channel/relay.js";
import { FaultTimer } from "./fault-timer.js";
import { type LatencyFigures, LatencySummary } from "./latency-summary.js";
import { RamStreamDecoder } from "./ram-stream.js";
import { ReturnPathDecoder } from "./return-path.js";

const QEVM_FIRST_BYTE = 0x51; // "Q"; a RAM record on the urgent lane starts with 0x00

export interface FaultFigures extends LatencyFigures {
  /** Page requests seen: `count` timed, `inFlight` for pages already on their way in (not timed). */
  requested: number;
  inFlight: number;
  /** Requests still waiting for their page, and dropped for the cap. */
  waiting: number;
  dropped: number;
  /** Why the timing stopped, if it did. */
  stopped?: string;
}

export class FaultObserver {
  private readonly timer: FaultTimer;
  private readonly summary = new LatencySummary();
  private stoppedWhy: string | undefined;

  constructor(
    private readonly log: Logger,
    /** Each fault's latency (ms), e.g. into the histogram. */
    onLatency: (ms: number) => void = () => {},
  ) {
    this.timer = new FaultTimer((ms) => {
      this.summary.add(ms);
      onLatency(ms);
    });
  }

  figures(): FaultFigures {
    return {
      ...this.summary.figures(),
      requested: this.timer.requests,
      inFlight: this.timer.inFlight,
      waiting: this.timer.waiting,
      dropped: this.timer.dropped,
      ...(this.stoppedWhy ? { stopped: this.stoppedWhy } : {}),
    };
  }

  /** The tap for one relayed connection (none once stopped or for a recovery's). */
  tap(o: { recover: boolean }): RelayTap | undefined {
    if (o.recover) this.stop("a post-copy recovery re-sends pages; faults after it are not timed", false);
    if (this.stoppedWhy) return undefined;
    let ram: RamStreamDecoder | undefined;
    const rp = new ReturnPathDecoder({
      request: (r) => this.timer.request(r),
      recovery: () => this.stop("a post-copy recovery began; faults after it are not timed", false),
    });
    const pages = {
      page: (block: string, offset: number) => this.timer.page(block, offset),
      switched: () => this.timer.switched(),
    };
    return {
      toQemu: (chunk) => {
        if (this.stoppedWhy) return;
        try {
          ram ??= new RamStreamDecoder(chunk[0] === QEVM_FIRST_BYTE, pages);
          ram.push(chunk);
        } catch (err) {
          this.stop((err as Error).message, true);
        }
      },
      fromQemu: (chunk) => {
        if (this.stoppedWhy) return;
        try {
          rp.push(chunk);
        } catch (err) {
          this.stop((err as Error).message, true);
        }
      },
    };
  }

  /** The migration ended here: the pairing state goes (the figures stay). */
  finish(): void {
    this.timer.finish();
  }

  private stop(why: string, failure: boolean): void {
    if (this.stoppedWhy) return;
    this.stoppedWhy = why;
    this.timer.finish();
    const fields = { why, timed: this.summary.count };
    if (failure) this.log.warn("post-copy fault timing stopped: stream not understood", fields);
    else this.log.info("post-copy fault timing stopped", fields);
  }
}
