// The handshake as an explicit state machine, independent of sockets: feed it the bytes
// received so far, it says how many it used, what to send back, and whether to enter the
// transmission phase or hang up. Fixed newstyle only; non-fixed newstyle clients get the
// subset the spec gives them (EXPORT_NAME, LIST, ABORT) and are dropped on anything else.
import type { Export } from "../../export/export.js";
import * as C from "../protocol/constants.js";
import { type Decoded, isNeed } from "../protocol/decoded.js";
import { ProtocolError } from "../protocol/errors.js";
import * as H from "../protocol/handshake.js";
import { maxPayload, transmissionFlags } from "./flags.js";

export type HandshakeState = "client-flags" | "options" | "transmission" | "closed";
type HandshakeEvent = "flags-ok" | "reply" | "enter" | "hangup";

/** Allowed transitions; anything else is a bug and throws. */
const TRANSITIONS: Record<HandshakeState, Partial<Record<HandshakeEvent, HandshakeState>>> = {
  "client-flags": { "flags-ok": "options", hangup: "closed" },
  options: { reply: "options", enter: "transmission", hangup: "closed" },
  transmission: {},
  closed: {},
};

/** Client flags we understand; any other bit set means we must disconnect. */
const KNOWN_CLIENT_FLAGS = C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES;
/** A client that keeps negotiating forever is dropped. */
export const MAX_OPTIONS = 256;
/** Id of the only meta context we serve. */
export const BASE_ALLOCATION_ID = 1;

export interface ExportLookup {
  resolve(name: string): Export | undefined;
  list(): Export[];
  /** While an export of this name is being created: settles when that ends. */
  opening?(name: string): Promise<void> | undefined;
}

export interface Negotiated {
  export: Export;
  structured: boolean;
  /** Meta context id of base:allocation for this export, or 0 when not negotiated. */
  metaContext: number;
  transmissionFlags: number;
}

export interface Step {
  consumed: number;
  out: Buffer[];
  /** Set when the handshake ended successfully: switch to transmission. */
  done?: Negotiated;
  /** Set when the connection must end (after sending `out`). */
  hangup?: string;
}

/** The option names an export still being created: feed the same bytes again once it settles. */
export interface Wait {
  wait: Promise<void>;
}

export class Handshake {
  state: HandshakeState = "client-flags";
  private fixed = false;
  private noZeroes = false;
  private structured = false;
  /** base:allocation as selected by the last SET_META_CONTEXT, and for which export. */
  private meta: { exportName: string; on: boolean } = { exportName: "", on: false };
  private options = 0;

  constructor(private readonly exports: ExportLookup) {}

  greeting(): Buffer {
    return H.encodeGreeting(C.NBD_FLAG_FIXED_NEWSTYLE | C.NBD_FLAG_NO_ZEROES);
  }

  private go(event: HandshakeEvent): void {
    const next = TRANSITIONS[this.state][event];
    if (!next) throw new Error(`handshake: no transition from ${this.state} on ${event}`);
    this.state = next;
  }

  /** Processes at most one message from the start of `buf`. Throws ProtocolError on bad framing. */
  step(buf: Buffer): { need: number } | Step | Wait {
    if (this.state === "client-flags") {
      const d = H.decodeClientFlags(buf);
      if (isNeed(d)) return d;
      if (d.value & ~KNOWN_CLIENT_FLAGS) {
        this.go("hangup");
        return { consumed: d.consumed, out: [], hangup: `unknown client flags 0x${d.value.toString(16)}` };
      }
      this.fixed = (d.value & C.NBD_FLAG_C_FIXED_NEWSTYLE) !== 0;
      this.noZeroes = (d.value & C.NBD_FLAG_C_NO_ZEROES) !== 0;
      this.go("flags-ok");
      return { consumed: d.consumed, out: [] };
    }
    if (this.state !== "options") throw new Error(`handshake: step() in state ${this.state}`);
    const d: Decoded<H.OptionRequest> = H.decodeOption(buf);
    if (isNeed(d)) return d;
    const wait = this.opening(d.value.option, d.value.data);
    if (wait) return { wait };
    if (++this.options > MAX_OPTIONS) {
      this.go("hangup");
      return { consumed: d.consumed, out: [], hangup: `more than ${MAX_OPTIONS} options` };
    }
    const r = this.option(d.value.option, d.value.data);
    this.go(r.done ? "enter" : r.hangup ? "hangup" : "reply");
    return { consumed: d.consumed, ...r };
  }

  /** An option about an export that is not there yet but being created: wait for it. */
  private opening(option: number, data: Buffer): Promise<void> | undefined {
    if (!this.exports.opening) return undefined;
    let name: string;
    try {
      if (option === C.NBD_OPT_EXPORT_NAME) name = H.decodeExportName(data);
      else if (option === C.NBD_OPT_GO || option === C.NBD_OPT_INFO) name = H.decodeInfoRequest(data).name;
      else if (option === C.NBD_OPT_SET_META_CONTEXT || option === C.NBD_OPT_LIST_META_CONTEXT)
        name = H.decodeMetaContextRequest(data).name;
      else return undefined;
    } catch (e) {
      if (e instanceof ProtocolError) return undefined; // answered as malformed by option()
      throw e;
    }
    return this.exports.resolve(name) ? undefined : this.exports.opening(name);
  }

  private option(option: number, data: Buffer): Omit<Step, "consumed"> {
    const err = (type: number, msg: string) => ({ out: [H.encodeOptionError(option, type, msg)] });
    if (
      !this.fixed &&
      option !== C.NBD_OPT_EXPORT_NAME &&
      option !== C.NBD_OPT_LIST &&
      option !== C.NBD_OPT_ABORT
    )
      return { out: [], hangup: `option ${option} from a non-fixed-newstyle client` };
    switch (option) {
      case C.NBD_OPT_EXPORT_NAME: {
        const e = this.exports.resolve(H.decodeExportName(data));
        // No way to report an error here: the spec says to disconnect.
        if (!e) return { out: [], hangup: "EXPORT_NAME: unknown export" };
        const flags = transmissionFlags(e, this.structured);
        return {
          out: [H.encodeExportNameReply(e.size, flags, this.noZeroes)],
          done: this.negotiated(e, flags),
        };
      }
      case C.NBD_OPT_ABORT:
        return { out: [H.encodeOptionReply(option, C.NBD_REP_ACK)], hangup: "client aborted" };
      case C.NBD_OPT_LIST: {
        if (data.length !== 0) return err(C.NBD_REP_ERR_INVALID, "LIST takes no data");
        const out = this.exports
          .list()
          .map((e) =>
            H.encodeOptionReply(option, C.NBD_REP_SERVER, H.encodeServerReply(e.name, e.description)),
          );
        out.push(H.encodeOptionReply(option, C.NBD_REP_ACK));
        return { out };
      }
      case C.NBD_OPT_STARTTLS:
        return err(C.NBD_REP_ERR_UNSUP, "TLS is not supported by this server");
      case C.NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return err(C.NBD_REP_ERR_INVALID, "STRUCTURED_REPLY takes no data");
        this.structured = true;
        return { out: [H.encodeOptionReply(option, C.NBD_REP_ACK)] };
      case C.NBD_OPT_INFO:
      case C.NBD_OPT_GO:
        return this.info(option, data);
      case C.NBD_OPT_LIST_META_CONTEXT:
      case C.NBD_OPT_SET_META_CONTEXT:
        return this.metaContext(option, data);
      default:
        return err(C.NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  private info(option: number, data: Buffer): Omit<Step, "consumed"> {
    let req: H.InfoRequest;
    try {
      req = H.decodeInfoRequest(data);
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      return { out: [H.encodeOptionError(option, C.NBD_REP_ERR_INVALID, e.message)] };
    }
    const e = this.exports.resolve(req.name);
    if (!e)
      return { out: [H.encodeOptionError(option, C.NBD_REP_ERR_UNKNOWN, `no export named "${req.name}"`)] };
    const flags = transmissionFlags(e, this.structured);
    const rep = (payload: Buffer) => H.encodeOptionReply(option, C.NBD_REP_INFO, payload);
    const out = [rep(H.encodeInfoExport(e.size, flags))];
    if (req.infos.includes(C.NBD_INFO_NAME)) out.push(rep(H.encodeInfoName(e.name)));
    if (req.infos.includes(C.NBD_INFO_DESCRIPTION) && e.description)
      out.push(rep(H.encodeInfoDescription(e.description)));
    const bs = e.backend.blockSizes;
    out.push(rep(H.encodeInfoBlockSize(bs.minimum, bs.preferred, maxPayload(e))));
    out.push(H.encodeOptionReply(option, C.NBD_REP_ACK));
    if (option === C.NBD_OPT_INFO) return { out };
    return { out, done: this.negotiated(e, flags) };
  }

  private metaContext(option: number, data: Buffer): Omit<Step, "consumed"> {
    const err = (type: number, msg: string) => ({ out: [H.encodeOptionError(option, type, msg)] });
    const set = option === C.NBD_OPT_SET_META_CONTEXT;
    if (set && !this.structured)
      return err(C.NBD_REP_ERR_INVALID, "SET_META_CONTEXT needs STRUCTURED_REPLY first");
    let req: H.MetaContextRequest;
    try {
      req = H.decodeMetaContextRequest(data);
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      return err(C.NBD_REP_ERR_INVALID, e.message);
    }
    const e = this.exports.resolve(req.name);
    if (!e) return err(C.NBD_REP_ERR_UNKNOWN, `no export named "${req.name}"`);
    const offer = e.backend.caps.blockStatus;
    // LIST with no queries lists everything; "base:" lists every base context.
    const match = (q: string) => q === C.BASE_ALLOCATION || (!set && (q === "base:" || q === ""));
    const selected =
      offer &&
      (set
        ? req.queries.some((q) => q === C.BASE_ALLOCATION)
        : req.queries.length === 0 || req.queries.some(match));
    const out: Buffer[] = [];
    if (selected)
      out.push(
        H.encodeOptionReply(
          option,
          C.NBD_REP_META_CONTEXT,
          H.encodeMetaContextReply(set ? BASE_ALLOCATION_ID : 0, C.BASE_ALLOCATION),
        ),
      );
    out.push(H.encodeOptionReply(option, C.NBD_REP_ACK));
    if (set) this.meta = { exportName: e.name, on: selected };
    return { out };
  }

  private negotiated(e: Export, flags: number): Negotiated {
    return {
      export: e,
      structured: this.structured,
      metaContext:
        this.structured && this.meta.on && this.meta.exportName === e.name ? BASE_ALLOCATION_ID : 0,
      transmissionFlags: flags,
    };
  }
}
