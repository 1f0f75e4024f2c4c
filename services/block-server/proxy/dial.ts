// Dialing a proxy's upstream: the first connection (structured replies, block status) and the
// data connection (simple replies, for a fetch thread: FileFetcher.connect). The second is
// started as soon as the first's TCP connect is done: the server has then queued the first,
// so one that takes a single client at a time serves the first and leaves the second waiting,
// and the two handshakes overlap (the second's is two options, two round trips, shorter).
// A second connection whose handshake does not end within DATA_CONNECT_MIN_MS, or 4× the
// first's handshake on a slow link, is given up: the server takes one client at a time.
import { NbdClient, type NbdClientOptions, NbdConnectionError } from "../nbd/client/client.js";
import { FileFetcher } from "./file-fetcher.js";

export const DATA_CONNECT_MIN_MS = 2000;
/** The first connection's bound on connect plus handshake. */
const FIRST_CONNECT_MS = 5000;

export interface Dialed {
  /** The first connection, and how long its connect and handshake took (ms). */
  first: Promise<{ client: NbdClient; handshakeMs: number }>;
  /** The data connection; rejects (NbdConnectionError) when it does not come, or the first failed. */
  second: Promise<NbdClient>;
  /** Gives the second connection up: a connect under way stops, one made is dropped. */
  dropSecond(): void;
}

/**
 * Dials both connections to `url`. `signal` aborts both; the second is also given up (dropped
 * if it came) when the first fails.
 */
export function dial(url: string, client: NbdClientOptions = {}, signal?: AbortSignal): Dialed {
  const secondAbort = new AbortController();
  let settled = false;
  let timer: NodeJS.Timeout | undefined;
  const giveUp = (why: string) => {
    secondAbort.abort(new NbdConnectionError(why));
    second.then(
      (c) => c.destroy(),
      () => {},
    );
  };
  const onAbort = () => giveUp("upstream connection closed");
  signal?.addEventListener("abort", onAbort, { once: true });
  let go!: () => void;
  const connected = new Promise<void>((r) => {
    go = r;
  });
  const t0 = performance.now();
  const first = NbdClient.connect(url, {
    connectTimeoutMs: FIRST_CONNECT_MS,
    ...client,
    signal,
    onConnect: go,
  }).then(
    (c) => ({ client: c, handshakeMs: performance.now() - t0 }),
    (e: Error) => {
      giveUp(`no data connection: the first one failed (${e.message})`);
      go();
      throw e;
    },
  );
  const second: Promise<NbdClient> = connected.then(async () => {
    const started = performance.now();
    // The bound depends on the first's handshake: set once that is known.
    void first.then(
      ({ handshakeMs }) => {
        if (settled || secondAbort.signal.aborted) return;
        const limit = Math.max(DATA_CONNECT_MIN_MS, 4 * handshakeMs);
        timer = setTimeout(
          () => secondAbort.abort(new NbdConnectionError(`no handshake within ${Math.round(limit)} ms`)),
          Math.max(0, started + limit - performance.now()),
        );
      },
      () => {},
    );
    return FileFetcher.connect(url, {
      ...client,
      connectTimeoutMs: 4 * FIRST_CONNECT_MS, // a backstop: the timer above decides
      signal: secondAbort.signal,
    });
  });
  const done = () => {
    settled = true;
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  };
  second.then(done, done);
  return { first, second, dropSecond: () => giveUp("upstream data connection given up") };
}
