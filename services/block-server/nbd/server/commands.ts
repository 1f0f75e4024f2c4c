// Per-command rules of the transmission phase, as a table: which flags a command may carry,
// whether it changes data, whether a payload follows, how out-of-range is reported.
import * as C from "../protocol/constants.js";
import { NBD_EINVAL, NBD_ENOSPC, NBD_EPERM } from "../protocol/errors.js";
import type { Request } from "../protocol/transmission.js";

export interface CommandRule {
  name: string;
  /** Flags allowed besides FUA (which every command may carry). */
  flags: number;
  mutates: boolean;
  /** A WRITE's data follows the header. */
  payload: boolean;
  /** Error for a range past the end: EINVAL for reads, ENOSPC for writes (per spec). */
  outOfRange: number;
  /** Length bounded by the export's maximum payload (READ and WRITE move that many bytes). */
  boundedLength: boolean;
  /** Offset and length are meaningless (FLUSH, DISC). */
  noRange?: boolean;
}

export const COMMANDS: Record<number, CommandRule> = {
  [C.NBD_CMD_READ]: {
    name: "READ",
    flags: C.NBD_CMD_FLAG_DF,
    mutates: false,
    payload: false,
    outOfRange: NBD_EINVAL,
    boundedLength: true,
  },
  [C.NBD_CMD_WRITE]: {
    name: "WRITE",
    flags: 0,
    mutates: true,
    payload: true,
    outOfRange: NBD_ENOSPC,
    boundedLength: true,
  },
  [C.NBD_CMD_DISC]: {
    name: "DISC",
    flags: 0,
    mutates: false,
    payload: false,
    outOfRange: NBD_EINVAL,
    boundedLength: false,
    noRange: true,
  },
  [C.NBD_CMD_FLUSH]: {
    name: "FLUSH",
    flags: 0,
    mutates: false,
    payload: false,
    outOfRange: NBD_EINVAL,
    boundedLength: false,
    noRange: true,
  },
  [C.NBD_CMD_TRIM]: {
    name: "TRIM",
    flags: 0,
    mutates: true,
    payload: false,
    outOfRange: NBD_EINVAL,
    boundedLength: false,
  },
  [C.NBD_CMD_CACHE]: {
    name: "CACHE",
    flags: 0,
    mutates: false,
    payload: false,
    outOfRange: NBD_EINVAL,
    boundedLength: false,
  },
  [C.NBD_CMD_WRITE_ZEROES]: {
    name: "WRITE_ZEROES",
    flags: C.NBD_CMD_FLAG_NO_HOLE | C.NBD_CMD_FLAG_FAST_ZERO,
    mutates: true,
    payload: false,
    outOfRange: NBD_ENOSPC,
    boundedLength: false,
  },
  [C.NBD_CMD_BLOCK_STATUS]: {
    name: "BLOCK_STATUS",
    flags: C.NBD_CMD_FLAG_REQ_ONE,
    mutates: false,
    payload: false,
    outOfRange: NBD_EINVAL,
    boundedLength: false,
  },
};

export interface RequestContext {
  size: number;
  readOnly: boolean;
  maxPayload: number;
  structured: boolean;
  metaContext: number;
  transmissionFlags: number;
}

/** Why a request cannot be served (an NBD error and a message), or null if it is valid. */
export function validate(req: Request, ctx: RequestContext): { error: number; message: string } | null {
  const rule = COMMANDS[req.type];
  if (!rule) return { error: NBD_EINVAL, message: `unknown command ${req.type}` };
  const bad = (error: number, message: string) => ({ error, message: `${rule.name}: ${message}` });
  if (req.flags & ~(rule.flags | C.NBD_CMD_FLAG_FUA))
    return bad(NBD_EINVAL, `flags 0x${req.flags.toString(16)} not valid`);
  if (req.flags & C.NBD_CMD_FLAG_DF && !ctx.structured)
    return bad(NBD_EINVAL, "DF without structured replies");
  if (req.flags & C.NBD_CMD_FLAG_FAST_ZERO && !(ctx.transmissionFlags & C.NBD_FLAG_SEND_FAST_ZERO))
    return bad(NBD_EINVAL, "FAST_ZERO was not negotiated");
  if (rule.mutates && ctx.readOnly) return bad(NBD_EPERM, "export is read-only");
  if (req.type === C.NBD_CMD_TRIM && !(ctx.transmissionFlags & C.NBD_FLAG_SEND_TRIM))
    return bad(NBD_EINVAL, "not supported by this export");
  if (req.type === C.NBD_CMD_WRITE_ZEROES && !(ctx.transmissionFlags & C.NBD_FLAG_SEND_WRITE_ZEROES))
    return bad(NBD_EINVAL, "not supported by this export");
  if (req.type === C.NBD_CMD_BLOCK_STATUS && ctx.metaContext === 0)
    return bad(NBD_EINVAL, "no meta context was negotiated");
  if (rule.noRange) return null;
  if (req.length === 0) return bad(NBD_EINVAL, "zero length");
  if (rule.boundedLength && req.length > ctx.maxPayload)
    return bad(NBD_EINVAL, `length ${req.length} exceeds maximum ${ctx.maxPayload}`);
  if (req.offset + req.length > ctx.size)
    return bad(rule.outOfRange, `range ${req.offset}+${req.length} is past the end (${ctx.size})`);
  return null;
}
