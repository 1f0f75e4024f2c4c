// One line telling where a migration stands (pure): its state, memory sent, the disk's blocks
// local and how they came, the address's state, and how long it has run. The CLI prints it on each update.
import type { Migration } from "../../gen/vmhop/v1/control.js";

const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

export function formatProgress(m: Migration, nowMs = Date.now()): string {
  const parts = [`${m.migrationId} ${m.vmId} ${m.sourceHostId} → ${m.destinationHostId}: ${m.state}`];
  if (m.bytesSent > 0) parts.push(`memory ${mib(m.bytesSent)} sent`);
  const d = m.disk;
  if (d && d.blocksTotal > 0) {
    const pct = ((100 * d.blocksLocal) / d.blocksTotal).toFixed(1);
    parts.push(
      `disk ${d.blocksLocal}/${d.blocksTotal} blocks local (${pct}%), ` +
        `${mib(d.bytesFetchedOnDemand)} on demand, ${mib(d.bytesFetchedBackground)} background` +
        (d.promoted ? ", promoted" : ""),
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
  return parts.join("; ");
}
