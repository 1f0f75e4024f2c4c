// What opening a proxy waits for: the first upstream connection and the fingerprint, but not
// the zero map's first reply nor the second (data) connection's fetch thread: the export serves
// at once (fetches go through the first connection until the data connection is taken over).
// Both connections are dialed at once, the first greeted negotiating the full handshake, and
// the fingerprint is read over whichever is up first. A forwarder in front of real NBD servers
// holds the proxy's connections (or sends one elsewhere) to show each of these.
import * as net from "node:net";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { FINGERPRINT_SAMPLE } from "../../services/block-server/proxy/identity.js";
import { ProxyBackend } from "../../services/block-server/proxy/proxy-backend.js";
import { silentLogger } from "../../services/common/log.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import { startServer, type TestServer } from "./fixtures/nbd.js";
import { makeImage } from "./fixtures/proxy-servers.js";

const dir = tempDir("vmhop-proxyopen-");
const SIZE = 4 << 20;
const BS = 65536;
let up: TestServer;
/** A disk of another size under the same name. */
let other: TestServer;
let data: Buffer;
let n = 0;

test.before(async () => {
  const image = join(dir.path, "up.img");
  data = makeImage(image, SIZE);
  up = await startServer(dir.path, [{ name: "disk", path: image }]);
  const otherImage = join(dir.path, "other.img");
  makeImage(otherImage, SIZE / 2);
  other = await startServer(join(dir.path), [{ name: "disk", path: otherImage }]);
});
test.after(async () => {
  await up?.close();
  await other?.close();
  dir.cleanup();
});

interface Conn {
  /** Bytes the server sent through it, and the proxy. */
  bytesDown: number;
  bytesUp: number;
  closed: boolean;
}

interface Plan {
  /** Connects to the server only once this holds (polled). */
  after?: (conns: Conn[]) => boolean;
  /** Holds until release(): the whole connection, or the proxy's bytes only (the server's greeting goes through). */
  hold?: "connect" | "requests";
  /** To the other disk's server. */
  elsewhere?: boolean;
}

interface Forwarder {
  url: string;
  /** In accept order. */
  conns: Conn[];
  /** Lets what is held through. */
  release(): void;
  close(): Promise<void>;
}

/** Forwards each connection to the upstream server, the nth (1-based) as plans[n] says. */
async function forwarder(plans: Record<number, Plan>): Promise<Forwarder> {
  let release!: () => void;
  const released = new Promise<void>((r) => {
    release = r;
  });
  const conns: Conn[] = [];
  const sockets = new Set<net.Socket>();
  const listener = net.createServer(async (client) => {
    const conn: Conn = { bytesDown: 0, bytesUp: 0, closed: false };
    conns.push(conn);
    const plan = plans[conns.length] ?? {};
    sockets.add(client);
    client.on("error", () => {});
    client.once("close", () => {
      conn.closed = true;
    });
    try {
      if (plan.after) await until("the forwarder's condition", () => plan.after?.(conns), 10_000, 5);
      if (plan.hold === "connect") await released;
    } catch {
      client.destroy();
      return;
    }
    if (conn.closed) return;
    const server = net.createConnection({ host: "127.0.0.1", port: (plan.elsewhere ? other : up).port });
    sockets.add(server);
    server.on("error", () => client.destroy());
    server.on("data", (b: Buffer) => {
      conn.bytesDown += b.length;
      client.write(b);
    });
    const held: Buffer[] = [];
    let holding = plan.hold === "requests";
    void released.then(() => {
      holding = false;
      for (const b of held.splice(0)) server.write(b);
    });
    client.on("data", (b: Buffer) => {
      conn.bytesUp += b.length;
      if (holding) held.push(b);
      else server.write(b);
    });
    client.once("close", () => server.destroy());
    server.once("close", () => client.destroy());
  });
  await new Promise<void>((r) => listener.listen(0, "127.0.0.1", r));
  const port = (listener.address() as net.AddressInfo).port;
  return {
    url: `nbd://127.0.0.1:${port}/disk`,
    conns,
    release,
    close: async () => {
      release();
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => listener.close(() => r()));
    },
  };
}

/**
 * The first connection is greeted first (so it negotiates the full handshake) and then held;
 * the second connects once the proxy answered that greeting.
 */
function firstStalls(elsewhere = false): Record<number, Plan> {
  return { 1: { hold: "requests" }, 2: { after: (c) => c[0].bytesUp > 0, elsewhere } };
}

function open(url: string): Promise<ProxyBackend> {
  return ProxyBackend.open({ upstreamUrl: url, cachePath: join(dir.path, `c${n++}`), log: silentLogger });
}

test("the export serves before its data connection is up: fetches go through the first until it is", async () => {
  const fwd = await forwarder({ 2: { hold: "connect" } });
  let p: ProxyBackend | undefined;
  try {
    p = await open(fwd.url);
    assert.is(fwd.conns.length, 2, "the second connection was made");
    assert.not.ok(fwd.conns[1].closed, "opened while the second connection still waits (not given up on)");
    assert.is(fwd.conns[1].bytesDown, 0);
    assert.is(p.stats().upstream.zeroCopy, false);
    const firstBefore = fwd.conns[0].bytesDown;
    assert.ok((await p.read(3 * BS, BS)).equals(data.subarray(3 * BS, 4 * BS)), "a cold read is served");
    assert.ok(fwd.conns[0].bytesDown - firstBefore >= BS, "…its block came over the first connection");
    assert.is(p.stats().bytesFetchedOnDemand, BS);

    fwd.release();
    await p.dataReady();
    assert.ok(p.stats().upstream.zeroCopy, "the data connection took over once up");
    const dataBefore = fwd.conns[1].bytesDown;
    assert.ok((await p.read(10 * BS, 2 * BS)).equals(data.subarray(10 * BS, 12 * BS)));
    assert.ok(fwd.conns[1].bytesDown - dataBefore >= 2 * BS, "…and later fetches come over it");
    assert.ok((await p.read(0, SIZE)).equals(data), "every block as upstream has it");
  } finally {
    await p?.close();
    await fwd.close();
  }
});

test("the disk is identified over the data connection while the first one's handshake still runs", async () => {
  const fwd = await forwarder(firstStalls());
  let p: ProxyBackend | undefined;
  try {
    const opening = open(fwd.url);
    // Should a check below fail first, the open left behind must not crash the file unreported.
    opening.catch(() => {});
    // The first connection gets no further than its greeting until the fingerprint (4 KiB at
    // each end) came over the second.
    await until(
      "the fingerprint's reads over the second connection",
      () => fwd.conns[1]?.bytesDown >= 2 * FINGERPRINT_SAMPLE,
      10_000,
    );
    assert.ok(fwd.conns[0].bytesDown < 1024, "the first connection had its greeting only");
    fwd.release();
    p = await opening;
    assert.ok(fwd.conns[0].bytesDown < BS, "only the handshake and block status over the first");
    assert.ok((await p.read(SIZE - BS, BS)).equals(data.subarray(SIZE - BS)), "serves the disk");
  } finally {
    await p?.close();
    await fwd.close();
  }
});

test("connections that reach disks of different sizes are refused, with the reason", async () => {
  const fwd = await forwarder(firstStalls(true));
  try {
    const opening = open(fwd.url).then(
      () => undefined,
      (err: Error) => err,
    );
    // The other disk is identified over the second connection; then the first one comes up.
    await until(
      "the fingerprint's reads over the second connection",
      () => fwd.conns[1]?.bytesDown >= 2 * FINGERPRINT_SAMPLE,
      10_000,
    );
    fwd.release();
    const e = await opening;
    assert.instance(e, Error);
    assert.match(String(e), /its connections see different sizes \(4194304 and 2097152\)/);
  } finally {
    await fwd.close();
  }
});

test("closing the proxy while its data connection is still coming up gives that connect up", async () => {
  const fwd = await forwarder({ 2: { hold: "connect" } });
  try {
    const p = await open(fwd.url);
    assert.not.ok(fwd.conns[1].closed);
    await p.close();
    await until("the held connection to be dropped by the proxy", () => fwd.conns[1].closed, 5000);
    assert.is(fwd.conns[1].bytesDown, 0, "it never reached the server");
  } finally {
    await fwd.close();
  }
});

test.run();
