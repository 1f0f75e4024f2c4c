// The guest workload's heartbeats read back from serial logs: one reader for every test, so a
// line cut by a switch-over (the end of one log, the start of the next) rejoins the same way.
import { readFileSync } from "node:fs";
import { splitLines } from "../../services/page-server/lines.js";
import { type Heartbeat, parseHeartbeat } from "../../services/page-server/vm/heartbeat.js";

/** A serial log, or the byte range [from, to) of one. */
export type LogPart = string | { path: string; from?: number; to?: number };

/** The heartbeats in `logs` (one log or several) read as one stream, in order. */
export function heartbeats(logs: LogPart | readonly LogPart[]): Heartbeat[] {
  const parts: readonly LogPart[] = Array.isArray(logs) ? logs : [logs as LogPart];
  const bytes = Buffer.concat(
    parts.map((l) =>
      typeof l === "string" ? readFileSync(l) : readFileSync(l.path).subarray(l.from ?? 0, l.to),
    ),
  );
  return splitLines(bytes)
    .lines.map(parseHeartbeat)
    .filter((h) => h !== null);
}
