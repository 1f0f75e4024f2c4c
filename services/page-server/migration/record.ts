// The migrations a page-server knows (both roles), in memory: their records and how a record
// moves on (a final phase is never left).
import { EventEmitter } from "node:events";
import type { Compression } from "../channel/compress-policy.js";
import type { ChannelPath } from "../channel/path-policy.js";
import { newCounters, type RelayCounters } from "../channel/relay.js";
import { HostError } from "../errors.js";
import type { FaultFigures } from "../postcopy/observer.js";
import type { MigrationMode } from "./driver.js";
import { isFinalPhase, type Phase, phaseOf } from "./phase.js";
import type { MigrationProgress } from "./status.js";

export interface MigrationRecord {
  id: string;
  vmId: string;
  role: "source" | "destination";
  phase: Phase;
  progress?: MigrationProgress;
  /** Source side: bytes the page-server channel carried, as QEMU sent them and on the wire. */
  channelBytes: RelayCounters;
  /** Times a broken post-copy stream was re-opened (QEMU postcopy recovery). */
  recoveries: number;
  /** Source: guest pages asked for at the switch-over, ahead of the destination's faults (ring-pages.ts). */
  pagesSentAhead?: number;
  /**
   * Destination: stream bytes the channel had received when QEMU reported RESUME (an upper
   * bound on what had to cross before the VM ran here: the event comes a moment later).
   */
  bytesBeforeResume?: number;
  /**
   * Destination: the waiting QEMU was a warm one (started before the request, its disk and NIC
   * added when taken: vm/warm-pool.ts), not started for this migration.
   */
  warmQemu?: boolean;
  /** Destination: when QEMU reported RESUME (epoch ms): the VM runs here from then on. */
  resumedAtMs?: number;
  /**
   * How the stream crossed: "handoff" (the TCP connection given to QEMU on both ends, no
   * relay, so channelBytes stay 0) or "relay" (through the page-servers). A post-copy
   * recovery always relays.
   */
  channelPath?: ChannelPath;
  /** Source: the channel's round trip measured before the path was chosen (ms). */
  channelRttMs?: number;
  /** Source: why that path, e.g. "rtt 0.08 ms < 2 ms" or "requested; rtt 20.31 ms". */
  channelReason?: string;
  /** Source: the urgent lane (QEMU's postcopy-preempt) and compression the path runs with. */
  preempt?: boolean;
  compression?: Compression;
  /**
   * Destination, relayed: the post-copy faults the relay timed (count, p50/p99/max latency),
   * read when shown (postcopy/observer.ts).
   */
  faultTiming?: { figures(): FaultFigures; finish(): void };
  /** Channel connections carried so far (QEMU opens a second one for the urgent lane). */
  connections: number;
  /** Source: host time from QEMU's `migrate` to the end seen (as the driver measures it). */
  wallMs?: number;
  /** Source: the mode used (what "auto" chose, and why). */
  mode?: MigrationMode;
  modeReason?: string;
  error?: string;
  /**
   * Source, after a completed migration: what went wrong ending the source QEMU or retiring its
   * spec (the migration itself stays completed: the VM runs at the destination).
   */
  cleanupError?: string;
  events: EventEmitter<{ update: [MigrationRecord] }>;
}

export class MigrationTable {
  private readonly records = new Map<string, MigrationRecord>();

  add(id: string, vmId: string, role: MigrationRecord["role"]): MigrationRecord {
    const rec: MigrationRecord = {
      id,
      vmId,
      role,
      phase: "setup",
      channelBytes: newCounters(),
      recoveries: 0,
      connections: 0,
      events: new EventEmitter(),
    };
    this.records.set(id, rec);
    return rec;
  }

  /** Every migration known here, oldest first. */
  list(): MigrationRecord[] {
    return [...this.records.values()];
  }

  find(id: string): MigrationRecord | undefined {
    return this.records.get(id);
  }

  get(id: string): MigrationRecord {
    const m = this.records.get(id);
    if (!m) throw new HostError("not-found", `no migration ${id} on this host`);
    return m;
  }

  /** A migration that never began (its set-up failed): as if it had not been asked for. */
  forget(id: string): void {
    this.records.delete(id);
  }

  /** New progress, and the phase it implies unless `phase` says; a final phase stays. */
  update(rec: MigrationRecord, p?: MigrationProgress, phase?: Phase): void {
    if (isFinalPhase(rec.phase)) return;
    if (p) rec.progress = p;
    rec.phase = phase ?? (p ? phaseOf(p.status) : rec.phase);
    rec.events.emit("update", rec);
  }
}
