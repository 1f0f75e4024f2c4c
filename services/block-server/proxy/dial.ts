// Dialing a proxy's upstream: two connections at once, whose roles are settled when the
// server greets them (it speaks first; nothing is sent before): the first greeted negotiates
// the full handshake (structured replies, block status: the link's first connection), the
// other the data connection's (GO only, simple replies: FileFetcher.connect), two round trips
// shorter. A server that takes one client at a time greets only the one it took, which so
// becomes the first connection whichever it is. The data connection's handshake must end
// within DATA_CONNECT_MIN_MS, or 4× the first's on a slow link: else it is given up (the
// server takes one client at a time).
import { NbdClient, type NbdClientOptions, NbdConnectionError } from "../nbd/client/client.js";
import { FileFetcher } from "./file-fetcher.js";

export const DATA_CONNECT_MIN_MS = 2000;
/**
 * The first connection's bound on connect plus handshake. A refused connect fails at once; this
 * bounds an upstream that does not answer. 5 s was too short for a loaded source: ten proxies
 * opened at once (ten migrations) on a machine at load 40 timed out in the handshake, failing
 * every migration but one (faults-concurrent). Still well under the servers' 30 s limit.
 */
const FIRST_CONNECT_MS = 15_000;

export interface Dialed {
  /** The first connection, and how long its connect and handshake took (ms). */
  first: Promise<{ client: NbdClient; handshakeMs: number }>;
  /** The data connection; rejects (NbdConnectionError) when it does not come, or the first failed. */
  second: Promise<NbdClient>;
  /** Gives the data connection up: a connect under way stops, one made is dropped. */
  dropSecond(): void;
}

/** Dials both connections to `url`. `signal` aborts both. */
export function dial(url: string, client: NbdClientOptions = {}, signal?: AbortSignal): Dialed {
  const first = settle<{ client: NbdClient; handshakeMs: number }>();
  const second = settle<NbdClient>();
  const aborts = [new AbortController(), new AbortController()];
  const failed: (Error | undefined)[] = [undefined, undefined];
  /** Which of the two has the full handshake: the first the server greeted. */
  let full: number | undefined;
  let timer: NodeJS.Timeout | undefined;
  let secondSettled = false;
  const giveUpSecond = (why: string) => {
    if (full !== undefined) aborts[1 - full].abort(new NbdConnectionError(why));
    second.promise.then(
      (c) => c.destroy(),
      () => {},
    );
  };
  const onAbort = () => {
    for (const a of aborts) a.abort(new NbdConnectionError("upstream connection closed"));
  };
  signal?.addEventListener("abort", onAbort, { once: true });
  const t0 = performance.now();
  for (const i of [0, 1]) {
    NbdClient.connect(url, {
      connectTimeoutMs: FIRST_CONNECT_MS,
      ...client,
      signal: aborts[i].signal,
      onGreeting: () => {
        full ??= i;
        return full === i ? {} : FileFetcher.CONNECTION;
      },
    }).then(
      (c) => {
        if (i !== full) return second.resolve(c);
        const handshakeMs = performance.now() - t0;
        first.resolve({ client: c, handshakeMs });
        if (secondSettled) return;
        // Both were dialed at t0: the data connection's bound runs from there.
        const limit = Math.max(DATA_CONNECT_MIN_MS, 4 * handshakeMs);
        timer = setTimeout(
          () => aborts[1 - i].abort(new NbdConnectionError(`no handshake within ${Math.round(limit)} ms`)),
          Math.max(0, t0 + limit - performance.now()),
        );
      },
      (e: Error) => {
        failed[i] = e;
        if (i === full) {
          first.reject(e);
          giveUpSecond(`no data connection: the first one failed (${e.message})`);
        } else if (full !== undefined || !failed[1 - i]) {
          // The data connection failed, or this one before any greeting: the other, once
          // greeted, is the first connection, and it has no second.
          second.reject(e);
        } else first.reject(e); // both failed before a greeting
      },
    );
  }
  const done = () => {
    secondSettled = true;
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  };
  second.promise.then(done, done);
  first.promise.catch(() => {}); // the caller's; a failure also rejects `second`
  return {
    first: first.promise,
    second: second.promise,
    dropSecond: () => giveUpSecond("upstream data connection given up"),
  };
}

/** A promise and what settles it; settling again is a no-op. */
function settle<T>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: Error) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
