// Result of an incremental decoder: either more bytes are needed, or a value and how many
// bytes it used. Decoders never consume partially; callers keep buffering until `need` is met.

export type Decoded<T> = { need: number } | { value: T; consumed: number };

export function isNeed<T>(d: Decoded<T>): d is { need: number } {
  return "need" in d;
}

/** Reads a big-endian u64 at `at` as a JS number (exact up to 2^53; larger values stay larger). */
export function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * 0x1_0000_0000 + buf.readUInt32BE(at + 4);
}

/** Writes a JS number (0 <= n < 2^64) as a big-endian u64. */
export function writeU64(buf: Buffer, n: number, at: number): void {
  buf.writeUInt32BE(Math.floor(n / 0x1_0000_0000) >>> 0, at);
  buf.writeUInt32BE(n >>> 0, at + 4);
}
