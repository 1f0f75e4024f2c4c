// A client connection's lifecycle as a transition table, and the memory it may hold, both
// pure (no sockets): connection.ts drives them, and every reply path asks them first.
//
//   open ──greet──▶ handshake ──negotiated──▶ transmission
//    │                 │  └──────drain──────┐     │ drain (DISC, client EOF, protocol error)
//    │                 │                    ▼     ▼
//    │                 │                    draining (in-flight requests finish and reply)
//    └──────gone───────┴────────gone────────┴─────┴──▶ closed (socket gone: nothing more)

export type ConnState = "open" | "handshake" | "transmission" | "draining" | "closed";
export type ConnEvent = "greet" | "negotiated" | "drain" | "gone";

/** Allowed transitions; anything else is a bug and throws. */
const TRANSITIONS: Record<ConnState, Partial<Record<ConnEvent, ConnState>>> = {
  open: { greet: "handshake", gone: "closed" },
  handshake: { negotiated: "transmission", drain: "draining", gone: "closed" },
  transmission: { drain: "draining", gone: "closed" },
  draining: { gone: "closed" },
  closed: {},
};

export interface Allowed {
  /** Take bytes from the socket (handshake messages, requests, WRITE payloads). */
  read: boolean;
  /** Start new requests (backend work). */
  admit: boolean;
  /** Send replies (greeting, option replies, request replies, by write or sendfile). */
  reply: boolean;
}

export const ALLOWED: Record<ConnState, Allowed> = {
  open: { read: false, admit: false, reply: false },
  handshake: { read: true, admit: false, reply: true },
  transmission: { read: true, admit: true, reply: true },
  draining: { read: false, admit: false, reply: true },
  closed: { read: false, admit: false, reply: false },
};

export class Lifecycle {
  state: ConnState = "open";

  /** Takes the transition; throws on one the table does not have. */
  go(event: ConnEvent): ConnState {
    const next = TRANSITIONS[this.state][event];
    if (!next) throw new Error(`connection: no transition from ${this.state} on ${event}`);
    this.state = next;
    return next;
  }

  can(event: ConnEvent): boolean {
    return TRANSITIONS[this.state][event] !== undefined;
  }

  get allows(): Allowed {
    return ALLOWED[this.state];
  }
}

/** What one admitted request holds until its reply has left (or it was dropped). */
export interface Charge {
  readonly bytes: number;
  settled: boolean;
}

export interface InflightLimits {
  /** Bytes of requests and replies held before the connection stops reading. */
  maxBytes: number;
  /** Requests admitted and not yet answered before the connection stops reading. */
  maxRequests: number;
}

/**
 * Memory a connection holds for its requests: a READ counts its whole length from the moment
 * it is admitted (while it waits for the backend, a fetch, or the socket, and until its reply
 * has left Node), a WRITE its payload, anything else nothing but a request slot. Reading
 * stops while `full` and starts again once `roomToResume`, so a connection holds at most
 * maxBytes plus one request.
 */
export class Inflight {
  bytes = 0;
  requests = 0;

  constructor(private readonly limits: InflightLimits) {}

  admit(bytes: number): Charge {
    this.bytes += bytes;
    this.requests++;
    return { bytes, settled: false };
  }

  /** Gives a request's share back; false if it already was (settling twice is harmless). */
  settle(c: Charge): boolean {
    if (c.settled) return false;
    c.settled = true;
    this.bytes -= c.bytes;
    this.requests--;
    return true;
  }

  get full(): boolean {
    return this.bytes >= this.limits.maxBytes || this.requests >= this.limits.maxRequests;
  }

  /** Half the byte budget free again (so a connection near its bound does not flap). */
  get roomToResume(): boolean {
    return this.bytes <= this.limits.maxBytes / 2 && this.requests < this.limits.maxRequests;
  }
}
