// What an export advertises: transmission flags and block-size constraints.
import type { Export } from "../../export/export.js";
import * as C from "../protocol/constants.js";

export function transmissionFlags(e: Export, structured: boolean): number {
  const caps = e.backend.caps;
  const rw = !e.readOnly;
  let f = C.NBD_FLAG_HAS_FLAGS;
  if (!rw) f |= C.NBD_FLAG_READ_ONLY;
  if (caps.flush) f |= C.NBD_FLAG_SEND_FLUSH;
  if (rw && caps.fua) f |= C.NBD_FLAG_SEND_FUA;
  if (rw && caps.trim) f |= C.NBD_FLAG_SEND_TRIM;
  if (rw && caps.writeZeroes) f |= C.NBD_FLAG_SEND_WRITE_ZEROES;
  if (rw && caps.writeZeroes && caps.fastZero) f |= C.NBD_FLAG_SEND_FAST_ZERO;
  // DF only means something once replies can be split into chunks.
  if (structured) f |= C.NBD_FLAG_SEND_DF;
  if (caps.multiConn) f |= C.NBD_FLAG_CAN_MULTI_CONN;
  if (caps.cache) f |= C.NBD_FLAG_SEND_CACHE;
  return f;
}

/** Largest READ/WRITE payload the export accepts. */
export function maxPayload(e: Export): number {
  return Math.min(e.backend.blockSizes.maximum, C.MAX_REQUEST_LENGTH);
}
