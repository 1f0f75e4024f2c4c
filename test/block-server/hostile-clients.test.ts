// Hostile clients against `vmhop block serve` as deployed (a child process; target mode, and
// proxy mode over an upstream block-server): raw sockets that pipeline 600 READs of 32 MiB
// and read nothing, then hang up or stay; a handshake trickled a byte at a time; more clients
// than the connection cap. The server's memory stays bounded (VmRSS under 1 GiB, and no more
// READ work than one connection's budget), other clients keep getting the right data, and
// nothing is sent after a connection closed (no error line: on a closed descriptor, sendfile
// used to fail with EBADF).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { TargetBackend } from "../../services/block-server/export/target.js";
import { NbdClient } from "../../services/block-server/nbd/client/client.js";
import * as P from "../../services/block-server/nbd/protocol/index.js";
import { DEFAULT_LIMITS, NbdServer } from "../../services/block-server/nbd/server/index.js";
import { createLogger } from "../../services/common/log.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";
import { until, within } from "../helpers/wait.js";
import { type BlockServe, blockServe, tcpQueues } from "./fixtures/block-serve.js";
import { makeImage, RawClient } from "./fixtures/nbd.js";

const MiB = 1 << 20;
/**
 * The export is only 64 MiB (READ lengths are checked against its size, not its data): data
 * in the first half, which is in the page cache and goes out by sendfile, a hole in the
 * second, whose replies are read into buffers. The requests are the real thing: 600 × 32 MiB.
 */
const SIZE = 64 * MiB;
const READ = 32 * MiB;
const COUNT = 600;
const RSS_BOUND_MIB = 1024;
/** A connection's READ work is bounded by its budget, plus the one request that crossed it. */
const READ_WORK_BOUND = DEFAULT_LIMITS.maxInflightBytes + READ;

const dir = tempDir("vmhop-hostile-");
const img = join(dir.path, "disk.img");
let disk: Buffer;
/**
 * Started once (a server starts in seconds on a busy machine): a target export of the image,
 * a proxy of it (the target server is its upstream block-server; its cache starts cold, so
 * the first READs wait for fetches), and a server capped at two connections.
 */
const servers: { target?: BlockServe; proxy?: BlockServe; capped?: BlockServe } = {};

test.before(async () => {
  makeImage(img, SIZE, [[0, SIZE / 2]]);
  disk = readFileSync(img);
  [servers.target, servers.capped] = await Promise.all([
    blockServe(["--target", img], { grpc: true }),
    blockServe(["--target", img, "--max-connections", "2"]),
  ]);
  servers.proxy = await blockServe(
    ["--proxy", servers.target.url(), "--cache", join(dir.path, "cache"), "--name", "disk0"],
    { grpc: true },
  );
});

test.after(async () => {
  for (const s of Object.values(servers)) await s?.stop();
  dir.cleanup();
});

/** Samples the server's VmRSS until stopped; `max` in MiB. */
function sampleRss(s: BlockServe): { max: () => number; stop: () => void } {
  let max = s.rssMiB();
  const t = setInterval(() => {
    try {
      max = Math.max(max, s.rssMiB());
    } catch {
      // exited (the test then fails on its own)
    }
  }, 20);
  return { max: () => max, stop: () => clearInterval(t) };
}

/**
 * Negotiates, pipelines 600 READs of 32 MiB and never reads a reply; returns once replies
 * pile up unread (or the server's memory passed the bound, for the caller to report).
 */
async function flood(s: BlockServe): Promise<RawClient> {
  const c = await RawClient.connect(s.port);
  await c.go("disk0");
  c.sock.pause();
  const reqs: Buffer[] = [];
  for (let i = 0; i < COUNT; i++)
    reqs.push(
      P.encodeRequest({
        type: P.NBD_CMD_READ,
        flags: 0,
        cookie: BigInt(i),
        offset: (i % 2) * READ,
        length: READ,
      }),
    );
  c.write(Buffer.concat(reqs));
  // The server is at work on them once replies pile up unread: in our receive queue and its
  // send queue (a loopback socket holds at most 256 KiB unsent: TCP_NOTSENT_LOWAT).
  const local = c.sock.localPort!;
  await until(
    "unread replies piling up between the server and the hostile client",
    () => {
      const mine = tcpQueues(local, s.port);
      const its = tcpQueues(s.port, local);
      return (mine?.rx ?? 0) + (its?.tx ?? 0) >= 256 * 1024 || s.rssMiB() >= RSS_BOUND_MIB;
    },
    20_000,
  );
  return c;
}

/** Reads `n` MiB-sized pieces across the disk (data and hole) and checks every byte. */
async function readsRight(c: NbdClient, n: number, what: string): Promise<void> {
  for (let i = 0; i < n; i++) {
    const off = ((i * 5 + 1) % (SIZE / MiB)) * MiB + 512 * (i % 3);
    const len = Math.min(MiB, SIZE - off);
    const got = await within(c.read(off, len), 10_000, `${what}: READ ${i} at ${off}`);
    assert.ok(got.equals(disk.subarray(off, off + len)), `${what}: READ at ${off} returned other data`);
  }
}

/** Bytes the export has read for clients (gRPC status). */
async function bytesRead(s: BlockServe): Promise<number> {
  return Number((await s.status()).bytesRead);
}

function errorLines(s: BlockServe): Record<string, unknown>[] {
  return s.logs().filter((l) => l.level === "error");
}

// First while the proxy's cache is cold: its READs wait for fetches, and must count meanwhile.
test("a client that stays connected and never reads: memory bounded in target and proxy mode, others served right", async () => {
  for (const mode of ["proxy", "target"] as const) {
    const s = servers[mode]!;
    const before = await bytesRead(s);
    const rss = sampleRss(s);
    const other = await NbdClient.connect(s.url());
    let hostile: RawClient | undefined;
    try {
      hostile = await flood(s);
      assert.ok(rss.max() < RSS_BOUND_MIB, `${mode}: VmRSS reached ${rss.max().toFixed(0)} MiB`);
      await readsRight(other, 16, `${mode}: a client reading meanwhile`);
      const hostileWork = (await bytesRead(s)) - before - 16 * MiB;
      assert.ok(
        hostileWork <= READ_WORK_BOUND,
        `${mode}: the server read ${hostileWork / MiB} MiB for a client that reads nothing (bound ${READ_WORK_BOUND / MiB} MiB)`,
      );
      assert.ok(
        tcpQueues(hostile.sock.localPort!, s.port)?.established,
        `${mode}: the hostile client is still connected`,
      );
      assert.ok(rss.max() < RSS_BOUND_MIB, `${mode}: VmRSS reached ${rss.max().toFixed(0)} MiB`);
      assert.equal(errorLines(s), [], `${mode}: no error logged`);
    } finally {
      rss.stop();
      hostile?.destroy();
      other.destroy();
    }
  }
});

for (const mode of ["target", "proxy"] as const)
  test(`${mode}: 600 READs of 32 MiB pipelined and never read, then a hang-up: memory bounded, the work dropped, others served right, nothing sent after the close`, async () => {
    const s = servers[mode]!;
    const before = await bytesRead(s);
    const rss = sampleRss(s);
    const other = await NbdClient.connect(s.url());
    try {
      const hostile = await flood(s);
      const local = hostile.sock.localPort!;
      hostile.destroy(); // with replies unread: the server sees a reset
      await readsRight(other, 16, "a client reading meanwhile");
      await until("the server to close the hostile connection", () => !tcpQueues(s.port, local), 10_000);
      assert.ok(rss.max() < RSS_BOUND_MIB, `VmRSS reached ${rss.max().toFixed(0)} MiB`);
      const hostileWork = (await bytesRead(s)) - before - 16 * MiB;
      assert.ok(
        hostileWork <= READ_WORK_BOUND,
        `the server read ${hostileWork / MiB} MiB for the hostile client (bound ${READ_WORK_BOUND / MiB} MiB): it kept working after the hang-up`,
      );
      const fresh = await NbdClient.connect(s.url());
      await readsRight(fresh, 64, "a client connecting afterwards");
      await fresh.disconnect();
      assert.ok(rss.max() < RSS_BOUND_MIB, `VmRSS reached ${rss.max().toFixed(0)} MiB`);
      assert.equal(errorLines(s), [], "no error logged (a send on a closed descriptor would be)");
    } finally {
      rss.stop();
      other.destroy();
    }
  });

test("a handshake trickled a byte at a time is cut off at the handshake bound, with a log line", async () => {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({}, { sink: (l) => lines.push(JSON.parse(l)), level: "info" });
  const handshakeTimeoutMs = 1500;
  const srv = new NbdServer({ log, limits: { handshakeTimeoutMs } });
  srv.exports.add({ name: "disk0", backend: new TargetBackend(img, { readOnly: true }) });
  const addr = await srv.listen("127.0.0.1:0");
  const port = "port" in addr ? addr.port : 0;
  let trickle: NodeJS.Timeout | undefined;
  try {
    // A byte every 250 ms: never silent for long, never done (an option with 4 KiB of data).
    const c = await RawClient.connect(port);
    await c.read(18);
    const bytes = Buffer.concat([
      P.encodeClientFlags(P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES),
      P.encodeOption(P.NBD_OPT_GO, Buffer.alloc(4096)),
    ]);
    let at = 0;
    trickle = setInterval(() => {
      if (!c.ended && at < bytes.length) c.write(bytes.subarray(at, ++at));
    }, 250);
    await within(c.closed(60_000), handshakeTimeoutMs + 5000, "the server to cut the trickled handshake off");
    assert.ok(at < bytes.length, "the client was still sending");
    const cut = lines.find((l) => l.msg === "closing connection" && l.level === "warn");
    assert.ok(cut, `a log line says why: ${JSON.stringify(lines)}`);
    assert.match(String(cut.reason), `handshake not finished within ${handshakeTimeoutMs} ms`);
    // A client that finishes its handshake in time is served as ever.
    const ok = await NbdClient.connect(`nbd://127.0.0.1:${port}/disk0`);
    assert.ok((await ok.read(0, 4096)).equals(disk.subarray(0, 4096)));
    await ok.disconnect();
  } finally {
    clearInterval(trickle);
    await srv.close();
    await srv.exports.clear();
  }
});

test("connections beyond --max-connections are refused with a log line; those connected keep working", async () => {
  const s = servers.capped!;
  const a = await NbdClient.connect(s.url());
  const b = await NbdClient.connect(s.url());
  try {
    const refused = await RawClient.connect(s.port);
    const sent = await within(refused.closed(10_000), 10_000, "the refused client's connection to end");
    assert.is(sent.length, 0, "no greeting for a refused client");
    const line = await until(
      "the refusal's log line",
      () => s.logs().find((l) => l.msg === "connection refused"),
      10_000,
    );
    assert.is(line.level, "warn");
    assert.match(String(line.reason), "too many connections (limit 2)");
    await readsRight(a, 4, "first client");
    await readsRight(b, 4, "second client");
    // A slot frees when a client leaves.
    await a.disconnect();
    const c = await until(
      "a new client to get the slot",
      async () => {
        const r = await RawClient.connect(s.port);
        try {
          return (await r.read(18, 2000)).length === 18;
        } catch {
          return false;
        } finally {
          r.destroy();
        }
      },
      10_000,
    );
    assert.ok(c);
  } finally {
    a.destroy();
    b.destroy();
  }
});

test.run();
