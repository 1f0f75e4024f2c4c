// A migration's progress over time, bounded (pure): a sample per progress write, kept only once
// it is at least span/(max/2) after the one before (else it replaces the latest), and thinned to
// every other sample whenever the limit is reached. So a migration of any length keeps an evenly
// spread history of at most `max` samples, the first and the latest always among them.
import type { MigrationRecord } from "./records.js";

export interface ProgressSampleRecord {
  at_unix_ms: number;
  bytes_sent: number;
  bytes_remaining: number;
  blocks_local: number;
  blocks_total: number;
}

export const MAX_PROGRESS_SAMPLES = 200;

/** What a record says is still remote at `atMs`, as a sample. */
export function sampleOf(m: MigrationRecord, atMs: number): ProgressSampleRecord {
  return {
    at_unix_ms: atMs,
    bytes_sent: m.bytes_sent,
    bytes_remaining: m.memory?.bytes_remaining ?? 0,
    blocks_local: m.disk?.blocks_local ?? 0,
    blocks_total: m.disk?.blocks_total ?? 0,
  };
}

/** `history` with `s` appended; at `max` samples it first drops every other one (keeping the first and last). */
export function appendSample(
  history: readonly ProgressSampleRecord[] | undefined,
  s: ProgressSampleRecord,
  max = MAX_PROGRESS_SAMPLES,
): ProgressSampleRecord[] {
  let h = history ?? [];
  const last = h.at(-1);
  // The same figures again add nothing to the curve but a point at the end of a flat run.
  if (last && sameFigures(last, s) && h.length >= 2 && sameFigures(h[h.length - 2], s))
    return [...h.slice(0, -1), s];
  if (h.length >= 2) {
    // Closer than the history's spacing to the sample before the latest: it takes the latest's place.
    const spacing = (h[h.length - 1].at_unix_ms - h[0].at_unix_ms) / (max / 2);
    if (s.at_unix_ms - h[h.length - 2].at_unix_ms < spacing) return [...h.slice(0, -1), s];
  }
  if (h.length >= max) h = h.filter((_, i) => i % 2 === 0 || i === h.length - 1);
  return [...h, s];
}

function sameFigures(a: ProgressSampleRecord, b: ProgressSampleRecord): boolean {
  return (
    a.bytes_sent === b.bytes_sent &&
    a.bytes_remaining === b.bytes_remaining &&
    a.blocks_local === b.blocks_local &&
    a.blocks_total === b.blocks_total
  );
}
