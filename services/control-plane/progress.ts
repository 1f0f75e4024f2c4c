// One line telling where a migration stands (pure): its state, memory sent, the disk's blocks
// local and how they came, the disk copy's ETA, the address's state, how long it has run, and
// what failed or was lost.
// The CLI prints it on each update (redrawn in place on a terminal).
import type { Migration } from "../../gen/vmhop/v1/control.js";

const PAST_MEMORY = new Set(["completing", "relocating", "done", "failed", "cancelled"]);

const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

/** Where the disk copy stood at one record: the origin of the copy rate behind the ETA. */
export interface DiskSample {
  atMs: number;
  blocksLocal: number;
}

/** The record's disk progress as a sample (undefined while the disk has no progress yet). */
export function diskSample(m: Migration): DiskSample | undefined {
  const d = m.disk;
  return d && d.blocksTotal > 0 ? { atMs: m.updatedUnixMs, blocksLocal: d.blocksLocal } : undefined;
}

/** "42 s", "3 min 05 s", "1 h 02 min". */
export function formatDuration(s: number): string {
  const t = Math.max(0, Math.round(s));
  if (t < 60) return `${t} s`;
  if (t < 3600) return `${Math.floor(t / 60)} min ${String(t % 60).padStart(2, "0")} s`;
  return `${Math.floor(t / 3600)} h ${String(Math.floor((t % 3600) / 60)).padStart(2, "0")} min`;
}

/**
 * Seconds until every block is local at the copy's average rate since `since` (both sides
 * the records' own times), or undefined when no rate is known yet or the copy is done.
 */
export function diskEtaSeconds(m: Migration, since: DiskSample | undefined): number | undefined {
  const d = m.disk;
  if (!since || !d || d.blocksTotal === 0 || d.blocksLocal >= d.blocksTotal) return undefined;
  const blocks = d.blocksLocal - since.blocksLocal;
  const ms = m.updatedUnixMs - since.atMs;
  if (blocks <= 0 || ms <= 0) return undefined;
  return ((d.blocksTotal - d.blocksLocal) * ms) / blocks / 1000;
}

/** `since`: the first disk sample the caller saw (diskSample), for the ETA. */
export function formatProgress(m: Migration, nowMs = Date.now(), since?: DiskSample): string {
  const parts = [`${m.migrationId} ${m.vmId} ${m.sourceHostId} → ${m.destinationHostId}: ${m.state}`];
  if (m.bytesSent > 0) {
    // Remaining while memory still moves (post-copy: what the VM may still fault on at the destination).
    const left =
      m.memory && m.memory.bytesRemaining > 0 && !PAST_MEMORY.has(m.state) ? m.memory.bytesRemaining : 0;
    const r = m.memory?.recoveries ?? 0;
    const recovered = r > 0 ? `, ${r} post-copy ${r === 1 ? "recovery" : "recoveries"}` : "";
    parts.push(`memory ${mib(m.bytesSent)} sent${left ? `, ${mib(left)} remaining` : ""}${recovered}`);
  }
  const d = m.disk;
  if (d && d.blocksTotal > 0) {
    const pct = ((100 * d.blocksLocal) / d.blocksTotal).toFixed(1);
    const eta = diskEtaSeconds(m, since);
    parts.push(
      `disk ${d.blocksLocal}/${d.blocksTotal} blocks local (${pct}%), ` +
        `${mib(d.bytesFetchedOnDemand)} on demand, ${mib(d.bytesFetchedBackground)} background` +
        (d.promoted ? ", promoted" : "") +
        (eta === undefined ? "" : `, ETA ${formatDuration(eta)}`),
    );
  }
  const n = m.network;
  if (n?.state)
    parts.push(
      n.state === "skipped"
        ? `address not moved (${n.reason})`
        : `address ${n.state}${n.fromSite ? ` ${n.fromSite} → ${n.toSite}` : ""}` +
            (n.reason ? ` (${n.reason})` : ""),
    );
  const started = m.enteredUnixMs.pending ?? m.createdUnixMs;
  if (started > 0) parts.push(`${((nowMs - started) / 1000).toFixed(1)} s`);
  if (m.error) parts.push(`error: ${m.error}`);
  if (m.lost) parts.push(`lost: ${m.lost}`);
  return parts.join("; ");
}
