// What opening a proxy waits for: the first upstream connection, the fingerprint and the zero
// map's first reply, but not the second (data) connection's fetch thread: the export serves
// at once (fetches go through the first connection until the data connection is taken over).
// The data connection is dialed while the first one's handshake runs, and the fingerprint is
// read over whichever is up first. A forwarder in front of real NBD servers holds one of the
// proxy's connections (or sends it elsewhere) to show each of these.
import * as net from "node:net";
import { join } from "node:path";
import * as assert from "uvu/assert";
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

interface Forwarder {
  url: string;
  /** Per connection, in accept order: bytes the server sent through it, and whether it closed. */
  conns: { bytesDown: number; closed: boolean }[];
  /** Lets the held connection through to the server. */
  release(): void;
  close(): Promise<void>;
}

/**
 * Forwards each connection to the upstream server (the `elsewhereNth` one, 1-based, to the
 * other disk's); the `holdNth` one waits for release() first.
 */
async function holdingForwarder(holdNth: number, elsewhereNth = 0): Promise<Forwarder> {
  let release!: () => void;
  const released = new Promise<void>((r) => {
    release = r;
  });
  const conns: Forwarder["conns"] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer(async (client) => {
    const conn = { bytesDown: 0, closed: false };
    conns.push(conn);
    sockets.add(client);
    client.on("error", () => {});
    client.once("close", () => {
      conn.closed = true;
    });
    const nth = conns.length;
    if (nth === holdNth) await released;
    if (conn.closed) return;
    const server = net.createConnection({
      host: "127.0.0.1",
      port: (nth === elsewhereNth ? other : up).port,
    });
    sockets.add(server);
    server.on("error", () => client.destroy());
    server.on("data", (b: Buffer) => {
      conn.bytesDown += b.length;
    });
    client.pipe(server);
    server.pipe(client);
    client.once("close", () => server.destroy());
    server.once("close", () => client.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `nbd://127.0.0.1:${port}/disk`,
    conns,
    release,
    close: async () => {
      release();
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

function open(url: string): Promise<ProxyBackend> {
  return ProxyBackend.open({ upstreamUrl: url, cachePath: join(dir.path, `c${n++}`), log: silentLogger });
}

test("the export serves before its data connection is up: fetches go through the first until it is", async () => {
  const fwd = await holdingForwarder(2);
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
  const fwd = await holdingForwarder(1);
  let p: ProxyBackend | undefined;
  try {
    const opening = open(fwd.url);
    // The first connection gets no further than its TCP connect until the fingerprint (the
    // first and last blocks) came over the second.
    await until(
      "the fingerprint's reads over the second connection",
      () => fwd.conns[1]?.bytesDown >= 2 * BS,
      10_000,
    );
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
  const fwd = await holdingForwarder(1, 2);
  try {
    const opening = open(fwd.url).then(
      () => undefined,
      (err: Error) => err,
    );
    // The other disk is identified over the second connection; then the first one comes up.
    await until(
      "the fingerprint's reads over the second connection",
      () => fwd.conns[1]?.bytesDown >= 2 * BS,
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
  const fwd = await holdingForwarder(2);
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
