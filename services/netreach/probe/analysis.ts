// What a stream of echo replies says about a handover: losses and the longest silence. Pure.

export interface PingRecord {
  seq: number;
  /** Epoch ms (sub-ms precision) the request was sent. */
  sentAtMs: number;
  /** Epoch ms the reply arrived; absent when lost. */
  recvAtMs?: number;
}

export interface PingSummary {
  sent: number;
  received: number;
  lost: number;
  /** Longest run of consecutive lost requests. */
  longestLossRun: number;
  /** Longest time between two consecutive replies. */
  silenceMs: number;
  /** The probe's send spacing (median time between consecutive requests). */
  spacingMs: number;
  /**
   * The handover gap: the longest silence minus the send spacing, i.e. how much longer than
   * usual the correspondent waited for a reply. A silence always contains one spacing (replies
   * come that far apart when nothing happens), so without this a 10 ms probe would report a move
   * whose packets are merely delayed by one one-way delay (a forwarding pointer's detour) as
   * one-way + 10 ms.
   */
  gapMs: number;
  /** When the gap began (epoch ms of the reply before it). */
  gapStartMs: number | null;
  rttMedianMs: number | null;
}

export function summarisePings(records: PingRecord[]): PingSummary {
  const got = records.filter((r) => r.recvAtMs !== undefined).sort((a, b) => a.recvAtMs! - b.recvAtMs!);
  let gapMs = 0;
  let gapStartMs: number | null = null;
  for (let i = 1; i < got.length; i++) {
    const d = got[i].recvAtMs! - got[i - 1].recvAtMs!;
    if (d > gapMs) {
      gapMs = d;
      gapStartMs = got[i - 1].recvAtMs!;
    }
  }
  let run = 0;
  let longestLossRun = 0;
  for (const r of [...records].sort((a, b) => a.seq - b.seq)) {
    run = r.recvAtMs === undefined ? run + 1 : 0;
    longestLossRun = Math.max(longestLossRun, run);
  }
  const rtts = got.map((r) => r.recvAtMs! - r.sentAtMs).sort((a, b) => a - b);
  const bySeq = [...records].sort((a, b) => a.seq - b.seq);
  const spacings = bySeq
    .slice(1)
    .map((r, i) => r.sentAtMs - bySeq[i].sentAtMs)
    .sort((a, b) => a - b);
  const spacingMs = spacings.length ? spacings[spacings.length >> 1] : 0;
  return {
    sent: records.length,
    received: got.length,
    lost: records.length - got.length,
    longestLossRun,
    silenceMs: gapMs,
    spacingMs,
    gapMs: Math.max(0, gapMs - spacingMs),
    gapStartMs,
    rttMedianMs: rtts.length ? rtts[rtts.length >> 1] : null,
  };
}
