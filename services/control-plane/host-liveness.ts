// Host liveness: the leader checks every registered host's page-server and block-server
// (grpc.health.v1 Check with a deadline) every few seconds and records each host `up`,
// `suspect` (one or two checks missed in a row) or `down` (more), with what the last failure
// said. A miss where every failed check was only slow (no answer in time, as from a busy
// process on a loaded machine, rather than a refused or broken connection) takes three times
// as many rounds to make a host down: rolling migrations back for a slow answer costs more
// than waiting. The records carry a TTL, so liveness nobody checks any more (no leader) disappears
// instead of going stale. A host turning down is reported to `onDown` (the control-plane ends
// the migrations it breaks).
import type { Logger } from "../common/log.js";
import type { Store } from "../common/store/index.js";
import { HealthCheckError, HealthClients } from "./health-client.js";
import { type HostRecord, KEYS, readJson, scanJson } from "./records.js";

export type Liveness = "up" | "suspect" | "down";

export interface LivenessRecord {
  host_id: string;
  state: Liveness;
  missed: number;
  /** The last round's failed checks were all slow (HealthCheckError.slow). */
  slow?: boolean;
  detail: string;
  checked_unix_ms: number;
}

export interface HostLivenessOptions {
  /** Between two rounds of checks (default 2 s). */
  everyMs?: number;
  /** Each check's deadline (default 1.5 s). */
  deadlineMs?: number;
  /** Checks missed in a row that make a host down (default 3; fewer: suspect). */
  downAfter?: number;
  log: Logger;
  /** A host just went down (called once per transition to down). */
  onDown?: (host: HostRecord, rec: LivenessRecord) => void;
  /** A host answers again after missing checks (called once per transition back to up). */
  onUp?: (host: HostRecord) => void;
}

/** up / suspect / down from the checks missed in a row; `slow`: the last misses were only slow answers. */
export function livenessOf(missed: number, downAfter = 3, slow = false): Liveness {
  return missed === 0 ? "up" : missed < (slow ? SLOW_FACTOR * downAfter : downAfter) ? "suspect" : "down";
}

/** How many times more rounds of only slow answers make a host down. */
export const SLOW_FACTOR = 3;

export function readLiveness(store: Store): Promise<LivenessRecord[]> {
  return scanJson<LivenessRecord>(store, KEYS.livenessPrefix);
}

export class HostLiveness {
  private readonly health = new HealthClients();
  private timer?: NodeJS.Timeout;
  private round?: Promise<void>;
  private stopped = false;

  constructor(
    private readonly store: Store,
    private readonly opts: HostLivenessOptions,
  ) {}

  start(): void {
    const every = this.opts.everyMs ?? 2000;
    const tick = () => {
      if (this.stopped) return;
      this.round = this.checkAll()
        .then(() => {})
        .catch((err) => this.opts.log.warn("host liveness round", { err }))
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(tick, every);
        });
    };
    tick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.round;
    this.health.close();
  }

  /** One round: every host checked at once. */
  async checkAll(): Promise<LivenessRecord[]> {
    const hosts = await scanJson<HostRecord>(this.store, KEYS.hostPrefix);
    return Promise.all(hosts.map((h) => this.check(h)));
  }

  private async check(h: HostRecord): Promise<LivenessRecord> {
    const deadline = this.opts.deadlineMs ?? 1500;
    const ask = (what: string, address: string) =>
      this.health
        .get(address)
        .check(deadline)
        .then(
          () => undefined,
          (err: Error) => ({
            text: `${what} ${address}: ${err.message}`,
            slow: err instanceof HealthCheckError && err.slow,
          }),
        );
    const failed = (
      await Promise.all([
        ask("page-server", h.page_server_address),
        h.block_server_address ? ask("block-server", h.block_server_address) : undefined,
      ])
    ).filter((x) => x !== undefined);
    const problems = failed.map((f) => f.text);
    const slow = failed.length > 0 && failed.every((f) => f.slow);
    const key = KEYS.liveness(h.host_id);
    const prev = (await readJson<LivenessRecord>(this.store, key))?.value;
    const missed = problems.length === 0 ? 0 : (prev?.missed ?? 0) + 1;
    const downAfter = this.opts.downAfter ?? 3;
    const rec: LivenessRecord = {
      host_id: h.host_id,
      state: livenessOf(missed, downAfter, slow),
      missed,
      ...(slow ? { slow } : {}),
      detail: problems.join("; "),
      checked_unix_ms: Date.now(),
    };
    // Kept for a few rounds: without a leader checking, the record goes rather than lies.
    await this.store.set(key, JSON.stringify(rec), { ttlMs: 5 * (this.opts.everyMs ?? 2000) + deadline });
    if (rec.state !== prev?.state)
      this.opts.log[rec.state === "up" ? "info" : "warn"]("host liveness", { ...rec });
    if (rec.state === "down" && prev?.state !== "down") this.opts.onDown?.(h, rec);
    if (rec.state === "up" && prev && prev.state !== "up") this.opts.onUp?.(h);
    return rec;
  }
}
