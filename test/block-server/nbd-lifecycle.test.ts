// A connection's lifecycle: the state table and the in-flight budget (pure), then what they
// mean on the wire: a WRITE larger than the budget still runs, a client that ends its side
// still gets its replies (draining), a sendfile reply whose rest goes through the threadpool
// keeps every reply whole and in its place.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import * as P from "../../services/block-server/nbd/protocol/index.js";
import { ALLOWED, Inflight, Lifecycle } from "../../services/block-server/nbd/server/lifecycle.js";
import { SYNC_REMAINDER_MAX } from "../../services/block-server/nbd/server/read-reply.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";
import { until, within } from "../helpers/wait.js";
import { tcpQueues } from "./fixtures/block-serve.js";
import { makeImage, pattern, RawClient, startServer, type TestServer } from "./fixtures/nbd.js";

const MiB = 1 << 20;

// ---- the state table ----

test("lifecycle: open -> handshake -> transmission -> draining -> closed, and what each state allows", () => {
  const l = new Lifecycle();
  assert.is(l.state, "open");
  assert.equal(l.allows, { read: false, admit: false, reply: false });
  assert.is(l.go("greet"), "handshake");
  assert.equal(l.allows, { read: true, admit: false, reply: true });
  assert.is(l.go("negotiated"), "transmission");
  assert.equal(l.allows, { read: true, admit: true, reply: true });
  assert.is(l.go("drain"), "draining");
  assert.equal(l.allows, { read: false, admit: false, reply: true });
  assert.is(l.go("gone"), "closed");
  assert.equal(l.allows, { read: false, admit: false, reply: false });
});

test("lifecycle: every state can end; nothing leaves closed; skipping a step is a bug", () => {
  for (const path of [[], ["greet"], ["greet", "negotiated"], ["greet", "drain"]] as const) {
    const l = new Lifecycle();
    for (const e of path) l.go(e);
    assert.ok(l.can("gone"), `gone from ${l.state}`);
    l.go("gone");
    assert.is(l.state, "closed");
    for (const e of ["greet", "negotiated", "drain", "gone"] as const)
      assert.not.ok(l.can(e), `closed on ${e}`);
    assert.throws(() => l.go("greet"), /no transition from closed on greet/);
  }
  const l = new Lifecycle();
  assert.throws(() => l.go("negotiated"), /no transition from open on negotiated/);
  l.go("greet");
  l.go("drain");
  assert.throws(() => l.go("negotiated"), /from draining on negotiated/);
  assert.not.ok(l.can("drain"), "draining twice is the caller's to skip");
  // Only transmission starts work; nothing but closed is silent.
  for (const [state, a] of Object.entries(ALLOWED)) {
    assert.is(a.admit, state === "transmission", state);
    assert.is(a.reply, state !== "closed" && state !== "open", state);
  }
});

test("in-flight budget: a READ counts its length from admission, full at either limit, resumes at half", () => {
  const f = new Inflight({ maxBytes: 64 * MiB, maxRequests: 4 });
  const a = f.admit(32 * MiB);
  assert.not.ok(f.full);
  const b = f.admit(32 * MiB);
  assert.ok(f.full, "64 MiB held: stop reading");
  const c = f.admit(32 * MiB); // the request that was already being parsed
  assert.is(f.bytes, 96 * MiB);
  f.settle(a);
  assert.ok(f.full);
  assert.not.ok(f.roomToResume);
  f.settle(b);
  assert.not.ok(f.full);
  assert.ok(f.roomToResume, "32 MiB held: half the budget");
  assert.ok(f.settle(c));
  assert.not.ok(f.settle(c), "settling twice gives nothing back twice");
  assert.equal([f.bytes, f.requests], [0, 0]);
  const small = [f.admit(0), f.admit(0), f.admit(0), f.admit(0)];
  assert.ok(f.full, "four requests: the request limit");
  f.settle(small[0]);
  assert.ok(f.roomToResume);
});

// ---- on the wire ----

const tmp = tempDir("vmhop-nbd-lifecycle-");
const img = join(tmp.path, "disk.img");
const SIZE = 32 * MiB;
/** With a byte budget of 1 MiB, and with the default one. */
let small: TestServer;
let srv: TestServer;

test.before(async () => {
  makeImage(img, SIZE, [[0, 24 * MiB]]);
  mkdirSync(join(tmp.path, "small"));
  small = await startServer(join(tmp.path, "small"), [{ name: "disk", path: img }], {
    limits: { maxInflightBytes: MiB },
  });
  srv = await startServer(tmp.path, [{ name: "disk", path: img }]);
});

test.after(async () => {
  await small?.close();
  await srv?.close();
  tmp.cleanup();
});

async function connect(structured = false, server = srv): Promise<RawClient> {
  const c = await RawClient.connect(server.port);
  await c.go("disk", { structured });
  return c;
}

test("a WRITE larger than the connection's byte budget is read whole and run (reading stops between requests only)", async () => {
  const c = await connect(false, small);
  try {
    const data = pattern(20 * MiB, 4 * MiB);
    c.request(P.NBD_CMD_WRITE, 28 * MiB, data.length, 1n, 0, data);
    assert.equal(await within(c.simpleReply(), 10_000, "the WRITE's reply"), { error: 0, cookie: 1n });
    c.request(P.NBD_CMD_READ, 28 * MiB, data.length, 2n);
    assert.equal(await c.simpleReply(), { error: 0, cookie: 2n });
    assert.ok((await c.read(data.length)).equals(data));
  } finally {
    c.destroy();
  }
});

test("a client that ends its side after its requests still gets every reply, then the server closes", async () => {
  const c = await connect();
  const data = pattern(7, 256 * 1024);
  c.request(P.NBD_CMD_WRITE, 25 * MiB, data.length, 1n, 0, data);
  c.request(P.NBD_CMD_FLUSH, 0, 0, 2n);
  c.request(P.NBD_CMD_READ, 0, 4096, 3n);
  c.sock.end(); // EOF after the requests, no DISC
  const cookies = new Set<bigint>();
  for (let i = 0; i < 3; i++) {
    const r = await within(c.simpleReply(), 10_000, `reply ${i + 1} of 3 after the client's EOF`);
    assert.is(r.error, 0);
    cookies.add(r.cookie);
    if (r.cookie === 3n) assert.ok((await c.read(4096)).equals(pattern(0, 4096)));
  }
  assert.equal([...cookies].sort(), [1n, 2n, 3n]);
  assert.is((await within(c.closed(10_000), 10_000, "the server to close")).length, 0);
  const check = await connect();
  check.request(P.NBD_CMD_READ, 25 * MiB, data.length, 4n);
  await check.simpleReply();
  assert.ok((await check.read(data.length)).equals(data), "the WRITE before the EOF happened");
  check.destroy();
});

test("a sendfile reply whose rest is read on the threadpool keeps every reply whole; replies finishing meanwhile wait behind it", async () => {
  const expected = (off: number, len: number) => (off >= 24 * MiB ? Buffer.alloc(len) : pattern(off, len));
  for (const structured of [false, true]) {
    const c = await connect(structured);
    try {
      // Not reading: the big READ's sendfile fills the socket and its rest (over
      // SYNC_REMAINDER_MAX) is read in the background. The hole READ and the FLUSH before it
      // finish meanwhile: their replies are held until that rest is out.
      c.sock.pause();
      const big = 8 * MiB;
      assert.ok(big > SYNC_REMAINDER_MAX + MiB);
      const reqs: [bigint, number, number, number][] = [
        [1n, P.NBD_CMD_READ, 24 * MiB + 4096, 256 * 1024],
        [2n, P.NBD_CMD_FLUSH, 0, 0],
        [3n, P.NBD_CMD_READ, 0, big],
        [4n, P.NBD_CMD_READ, 12 * MiB, 4096],
        [5n, P.NBD_CMD_READ, 16 * MiB, big],
        [6n, P.NBD_CMD_READ, 100, 1000],
      ];
      for (const [cookie, type, off, len] of reqs) c.request(type, off, len, cookie);
      const local = c.sock.localPort!;
      await until(
        "READ replies to fill the socket",
        () => (tcpQueues(srv.port, local)?.tx ?? 0) + (tcpQueues(local, srv.port)?.rx ?? 0) >= 256 * 1024,
        10_000,
      );
      c.sock.resume();
      const got = new Map<bigint, Buffer>();
      while (got.size < reqs.length) {
        let cookie: bigint;
        let data: Buffer = Buffer.alloc(0);
        if (structured) {
          const r = await within(c.reply(), 10_000, "a reply");
          const h = r.header;
          cookie = h.cookie;
          if (h.kind === "simple") assert.is(h.error, 0, "FLUSH's simple reply");
          else {
            assert.ok(h.flags & P.NBD_REPLY_FLAG_DONE, "one chunk per reply here");
            if (h.type === P.NBD_REPLY_TYPE_OFFSET_DATA) data = r.payload.subarray(8);
            else if (h.type === P.NBD_REPLY_TYPE_OFFSET_HOLE) data = Buffer.alloc(r.payload.readUInt32BE(8));
            else assert.unreachable(`chunk type ${h.type}`);
          }
        } else {
          const r = await within(c.simpleReply(), 10_000, "a simple reply");
          assert.is(r.error, 0);
          cookie = r.cookie;
          const q = reqs.find((x) => x[0] === cookie)!;
          if (q[1] === P.NBD_CMD_READ) data = await within(c.read(q[3]), 10_000, `READ ${cookie}'s data`);
        }
        const q = reqs.find((x) => x[0] === cookie);
        assert.ok(q, `a reply for a request sent (${cookie})`);
        assert.not.ok(got.has(cookie), `one reply for ${cookie}`);
        got.set(cookie, data);
        const [, type, off, len] = q;
        if (type === P.NBD_CMD_READ)
          assert.ok(data.equals(expected(off, len)), `READ ${cookie} (structured ${structured})`);
      }
    } finally {
      c.destroy();
    }
  }
});

test.run();
