// Migration ids: `m-<time>-<random>`, unique across stores and restarts (a page-server that
// remembers an older migration never meets its id again) and sorted by creation time as
// plain strings. The time is the creation's epoch ms in fixed-width base32, so ids of one
// millisecond differ only by their random part.
import { randomBytes } from "node:crypto";

/** Crockford's base32 in lower case: in ASCII order, so string order is numeric order. */
const DIGITS = "0123456789abcdefghjkmnpqrstvwxyz";
/** 10 digits = 50 bits of milliseconds: enough until the year 37648. */
const TIME_DIGITS = 10;
/** 16 digits = 80 random bits. */
const RANDOM_DIGITS = 16;

export const MIGRATION_ID = /^m-[0-9a-hjkmnp-tv-z]{10}-[0-9a-hjkmnp-tv-z]{16}$/;

function base32(n: bigint, digits: number): string {
  let s = "";
  for (let i = 0; i < digits; i++) {
    s = DIGITS[Number(n & 31n)] + s;
    n >>= 5n;
  }
  return s;
}

/** A new migration id for a migration created at `nowMs`; `random` is for tests (10 bytes). */
export function newMigrationId(nowMs = Date.now(), random: Buffer = randomBytes(10)): string {
  if (!Number.isSafeInteger(nowMs) || nowMs < 0) throw new RangeError(`bad time ${nowMs}`);
  return `m-${base32(BigInt(nowMs), TIME_DIGITS)}-${base32(BigInt(`0x${random.toString("hex")}`), RANDOM_DIGITS)}`;
}

/** The creation time (epoch ms) an id of newMigrationId carries; undefined for other ids. */
export function migrationIdTime(id: string): number | undefined {
  if (!MIGRATION_ID.test(id)) return undefined;
  let n = 0;
  for (const c of id.slice(2, 2 + TIME_DIGITS)) n = n * 32 + DIGITS.indexOf(c);
  return n;
}
