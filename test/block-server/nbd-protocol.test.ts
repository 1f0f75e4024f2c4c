// The server at the byte level: handshake options, malformed input, error codes, structured
// replies, pipelining and backpressure. After every bad client, a healthy one still works.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import * as P from "../../services/block-server/nbd/protocol/index.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";
import { makeImage, pattern, RawClient, startServer, type TestServer } from "./fixtures/nbd.js";

const MiB = 1 << 20;
const SIZE = 16 * MiB;
const tmp = tempDir("vmhop-nbd-proto-");
const img = join(tmp.path, "disk.img");
const ro = join(tmp.path, "ro.img");
let srv: TestServer;
const clients: RawClient[] = [];

async function client(): Promise<RawClient> {
  const c = await RawClient.connect(srv.port);
  clients.push(c);
  return c;
}

let bystander: RawClient;
let bystanderCookie = 1000n;

/**
 * The server is still serving: a client connected all along still reads known data, and a
 * fresh client can negotiate and read.
 */
async function healthy(): Promise<void> {
  const cookie = bystanderCookie++;
  bystander.request(P.NBD_CMD_READ, MiB + 8192, 4096, cookie);
  assert.equal(await bystander.simpleReply(), { error: 0, cookie });
  assert.ok((await bystander.read(4096)).equals(pattern(MiB + 8192, 4096)));
  const c = await client();
  const { size } = await c.go("disk");
  assert.is(size, SIZE);
  c.request(P.NBD_CMD_READ, MiB, 4096, 77n);
  const r = await c.simpleReply();
  assert.equal(r, { error: 0, cookie: 77n });
  assert.ok((await c.read(4096)).equals(pattern(MiB, 4096)));
  c.destroy();
}

test.before(async () => {
  makeImage(img, SIZE, [
    [0, 2 * MiB],
    [8 * MiB, MiB],
  ]);
  makeImage(ro, MiB, [[0, MiB]]);
  srv = await startServer(
    tmp.path,
    [
      { name: "disk", path: img },
      { name: "ro", path: ro, readOnly: true },
    ],
    { limits: { maxInflightBytes: 8 * MiB, handshakeTimeoutMs: 1000 } },
  );
  bystander = await client();
  await bystander.go("disk");
});

test.after(async () => {
  for (const c of clients) c.destroy();
  await srv?.close();
  tmp.cleanup();
});

// ---- handshake ----

test("greeting advertises fixed newstyle and NO_ZEROES", async () => {
  const c = await client();
  assert.is(await c.start(), P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES);
  c.destroy();
});

test("a client that never finishes the handshake is dropped; connected idle clients are not", async () => {
  const idle = await client();
  await idle.go("disk");
  const silent = await client();
  await silent.read(18);
  await silent.closed();
  assert.is(idle.ended, false);
  idle.request(P.NBD_CMD_READ, 0, 512, 1n);
  assert.equal(await idle.simpleReply(), { error: 0, cookie: 1n });
  idle.destroy();
});

test("unknown client flags: disconnect", async () => {
  const c = await client();
  await c.start(0x80);
  assert.is((await c.closed()).length, 0);
  await healthy();
});

test("bad option magic: disconnect", async () => {
  const c = await client();
  await c.start();
  c.write(Buffer.from("IHAVEOPX\0\0\0\x07\0\0\0\0", "latin1"));
  await c.closed();
  await healthy();
});

test("huge option length: disconnect without waiting for the data", async () => {
  const c = await client();
  await c.start();
  const h = P.encodeOption(P.NBD_OPT_GO);
  h.writeUInt32BE(0xfffffff0, 12);
  c.write(h);
  await c.closed();
  await healthy();
});

test("truncated handshake: the server just drops the client", async () => {
  const c = await client();
  await c.read(18);
  c.write(Buffer.from([0, 0]));
  c.sock.end();
  await c.closed();
  await healthy();
});

test("unknown option -> ERR_UNSUP, STARTTLS -> ERR_UNSUP, then GO still works", async () => {
  const c = await client();
  await c.start();
  c.write(P.encodeOption(999, Buffer.from("xyz")));
  const r = await c.readOptionReply();
  assert.equal(r, {
    kind: "error",
    option: 999,
    type: P.NBD_REP_ERR_UNSUP,
    message: "option 999 is not supported",
  });
  c.write(P.encodeOption(P.NBD_OPT_STARTTLS));
  assert.is((await c.readOptionReply()).kind, "error");
  c.write(P.encodeOption(P.NBD_OPT_GO, P.encodeInfoRequest({ name: "disk", infos: [] })));
  let acked = false;
  while (!acked) acked = (await c.readOptionReply()).kind === "ack";
  c.destroy();
});

test("OPT_INFO and OPT_GO: unknown export -> ERR_UNKNOWN; info carries name, description, block size", async () => {
  const c = await client();
  await c.start();
  c.write(P.encodeOption(P.NBD_OPT_INFO, P.encodeInfoRequest({ name: "nope", infos: [] })));
  const e = await c.readOptionReply();
  assert.is(e.kind === "error" && e.type, P.NBD_REP_ERR_UNKNOWN);
  c.write(
    P.encodeOption(
      P.NBD_OPT_INFO,
      P.encodeInfoRequest({ name: "disk", infos: [P.NBD_INFO_NAME, P.NBD_INFO_BLOCK_SIZE] }),
    ),
  );
  const infos: P.Info[] = [];
  for (;;) {
    const r = await c.readOptionReply();
    if (r.kind === "ack") break;
    if (r.kind === "info") infos.push(r.info);
  }
  assert.ok(infos.some((i) => i.info === "export" && i.size === SIZE));
  assert.ok(infos.some((i) => i.info === "name" && i.name === "disk"));
  assert.ok(infos.some((i) => i.info === "block_size" && i.maximum === 32 * MiB));
  // A malformed INFO payload is ERR_INVALID, not a crash.
  c.write(P.encodeOption(P.NBD_OPT_GO, Buffer.from([0, 0, 0, 50, 1])));
  const bad = await c.readOptionReply();
  assert.is(bad.kind === "error" && bad.type, P.NBD_REP_ERR_INVALID);
  c.destroy();
});

test("LIST with data -> ERR_INVALID; LIST lists exports; ABORT is acknowledged then closed", async () => {
  const c = await client();
  await c.start();
  c.write(P.encodeOption(P.NBD_OPT_LIST, Buffer.from("x")));
  const bad = await c.readOptionReply();
  assert.is(bad.kind === "error" && bad.type, P.NBD_REP_ERR_INVALID);
  c.write(P.encodeOption(P.NBD_OPT_LIST));
  const names: string[] = [];
  for (;;) {
    const r = await c.readOptionReply();
    if (r.kind === "ack") break;
    if (r.kind === "server") names.push(r.name);
  }
  assert.equal(names.sort(), ["disk", "ro"]);
  c.write(P.encodeOption(P.NBD_OPT_ABORT));
  assert.is((await c.readOptionReply()).kind, "ack");
  await c.closed();
});

test("meta contexts: SET needs structured replies; LIST and SET select base:allocation", async () => {
  const c = await client();
  await c.start();
  const req = P.encodeMetaContextRequest({ name: "disk", queries: [P.BASE_ALLOCATION] });
  c.write(P.encodeOption(P.NBD_OPT_SET_META_CONTEXT, req));
  const r0 = await c.readOptionReply();
  assert.is(r0.kind === "error" && r0.type, P.NBD_REP_ERR_INVALID);
  c.write(
    P.encodeOption(P.NBD_OPT_LIST_META_CONTEXT, P.encodeMetaContextRequest({ name: "disk", queries: [] })),
  );
  const l = await c.readOptionReply();
  assert.is(l.kind === "meta_context" && l.name, P.BASE_ALLOCATION);
  assert.is((await c.readOptionReply()).kind, "ack");
  c.write(P.encodeOption(P.NBD_OPT_STRUCTURED_REPLY));
  assert.is((await c.readOptionReply()).kind, "ack");
  c.write(
    P.encodeOption(
      P.NBD_OPT_SET_META_CONTEXT,
      P.encodeMetaContextRequest({ name: "disk", queries: ["x:y"] }),
    ),
  );
  assert.is((await c.readOptionReply()).kind, "ack"); // unknown context: nothing selected
  c.write(P.encodeOption(P.NBD_OPT_SET_META_CONTEXT, req));
  const s = await c.readOptionReply();
  assert.ok(s.kind === "meta_context" && s.id > 0 && s.name === P.BASE_ALLOCATION);
  assert.is((await c.readOptionReply()).kind, "ack");
  c.destroy();
});

test("EXPORT_NAME: unknown name disconnects; known name answers with 134 bytes without NO_ZEROES", async () => {
  const a = await client();
  await a.start();
  a.write(P.encodeOption(P.NBD_OPT_EXPORT_NAME, Buffer.from("nope")));
  await a.closed();
  const b = await client();
  await b.start(P.NBD_FLAG_C_FIXED_NEWSTYLE);
  b.write(P.encodeOption(P.NBD_OPT_EXPORT_NAME, Buffer.from("disk")));
  const rep = await b.read(134);
  assert.is(rep.readUInt32BE(4), SIZE);
  assert.ok(rep.subarray(10).every((x) => x === 0));
  b.request(P.NBD_CMD_READ, 0, 512, 1n);
  assert.equal(await b.simpleReply(), { error: 0, cookie: 1n });
  assert.ok((await b.read(512)).equals(pattern(0, 512)));
  b.destroy();
});

test("non-fixed newstyle client: EXPORT_NAME works, an unknown option disconnects", async () => {
  const a = await client();
  await a.start(P.NBD_FLAG_C_NO_ZEROES);
  a.write(P.encodeOption(P.NBD_OPT_EXPORT_NAME, Buffer.from("disk")));
  assert.is((await a.read(10)).readUInt32BE(4), SIZE);
  a.destroy();
  const b = await client();
  await b.start(0);
  b.write(P.encodeOption(P.NBD_OPT_STRUCTURED_REPLY));
  assert.is((await b.closed()).length, 0);
  await healthy();
});

// ---- transmission ----

test("bad request magic: disconnect", async () => {
  const c = await client();
  await c.go("disk");
  const r = P.encodeRequest({ type: P.NBD_CMD_READ, flags: 0, cookie: 1n, offset: 0, length: 512 });
  r[0] ^= 0xff;
  c.write(r);
  await c.closed();
  await healthy();
});

test("errors: out of range, oversized, zero length, unknown command, bad flags", async () => {
  const c = await client();
  await c.go("disk");
  const expect = async (cookie: bigint, error: number) =>
    assert.equal(await c.simpleReply(), { error, cookie });
  c.request(P.NBD_CMD_READ, SIZE - 512, 1024, 1n);
  await expect(1n, P.NBD_EINVAL);
  c.request(P.NBD_CMD_READ, 2 ** 60, 512, 2n);
  await expect(2n, P.NBD_EINVAL);
  c.request(P.NBD_CMD_READ, 0, 64 * MiB, 3n);
  await expect(3n, P.NBD_EINVAL);
  c.request(P.NBD_CMD_READ, 0, 0, 4n);
  await expect(4n, P.NBD_EINVAL);
  c.request(42, 0, 512, 5n);
  await expect(5n, P.NBD_EINVAL);
  c.request(P.NBD_CMD_READ, 0, 512, 6n, P.NBD_CMD_FLAG_NO_HOLE);
  await expect(6n, P.NBD_EINVAL);
  c.request(P.NBD_CMD_BLOCK_STATUS, 0, 512, 7n);
  await expect(7n, P.NBD_EINVAL); // no meta context negotiated
  c.request(P.NBD_CMD_TRIM, SIZE, 512, 8n);
  await expect(8n, P.NBD_EINVAL);
  c.request(P.NBD_CMD_WRITE_ZEROES, SIZE - 512, 4096, 9n);
  await expect(9n, P.NBD_ENOSPC);
  // A write past the end: ENOSPC, and its payload is consumed (the next request parses).
  c.request(P.NBD_CMD_WRITE, SIZE - 512, 4096, 10n, 0, Buffer.alloc(4096, 1));
  await expect(10n, P.NBD_ENOSPC);
  // An oversized write: EINVAL, its 33 MiB payload skipped rather than stored.
  c.request(P.NBD_CMD_WRITE, 0, 33 * MiB, 11n, 0, Buffer.alloc(33 * MiB, 7));
  await expect(11n, P.NBD_EINVAL);
  c.request(P.NBD_CMD_READ, 0, 512, 12n);
  await expect(12n, 0);
  assert.ok((await c.read(512)).equals(pattern(0, 512)));
  c.destroy();
  await healthy();
});

test("read-only export: EPERM for WRITE, TRIM, WRITE_ZEROES; reads still work", async () => {
  const c = await client();
  const { flags } = await c.go("ro");
  assert.ok(flags & P.NBD_FLAG_READ_ONLY);
  c.request(P.NBD_CMD_WRITE, 0, 4096, 1n, 0, Buffer.alloc(4096, 9));
  assert.equal(await c.simpleReply(), { error: P.NBD_EPERM, cookie: 1n });
  c.request(P.NBD_CMD_TRIM, 0, 4096, 2n);
  assert.equal(await c.simpleReply(), { error: P.NBD_EPERM, cookie: 2n });
  c.request(P.NBD_CMD_WRITE_ZEROES, 0, 4096, 3n);
  assert.equal(await c.simpleReply(), { error: P.NBD_EPERM, cookie: 3n });
  c.request(P.NBD_CMD_READ, 0, 4096, 4n);
  assert.equal(await c.simpleReply(), { error: 0, cookie: 4n });
  assert.ok((await c.read(4096)).equals(pattern(0, 4096)));
  c.destroy();
});

test("structured READ: data and hole chunks; DF gives one chunk; errors as ERROR chunks", async () => {
  const c = await client();
  await c.go("disk", { structured: true, meta: true });
  // [1 MiB, 3 MiB): 1 MiB of data then 1 MiB of hole.
  c.request(P.NBD_CMD_READ, MiB, 2 * MiB, 1n);
  const chunks: P.Chunk[] = [];
  for (;;) {
    const { header, payload } = await c.reply();
    assert.is(header.kind, "structured");
    if (header.kind !== "structured") break;
    assert.is(header.cookie, 1n);
    chunks.push(P.decodeChunkPayload(header.type, payload));
    if (header.flags & P.NBD_REPLY_FLAG_DONE) break;
  }
  const data = chunks.filter((x) => x.type === "data");
  const holes = chunks.filter((x) => x.type === "hole");
  assert.ok(holes.length >= 1, "expected a hole chunk");
  const got = Buffer.alloc(2 * MiB);
  for (const d of data) if (d.type === "data") d.data.copy(got, d.offset - MiB);
  assert.ok(got.subarray(0, MiB).equals(pattern(MiB, MiB)));
  assert.ok(got.subarray(MiB).every((x) => x === 0));

  c.request(P.NBD_CMD_READ, MiB, 2 * MiB, 2n, P.NBD_CMD_FLAG_DF);
  const one = await c.reply();
  assert.ok(one.header.kind === "structured" && one.header.flags & P.NBD_REPLY_FLAG_DONE);
  const chunk = P.decodeChunkPayload((one.header as P.ChunkHeader).type, one.payload);
  assert.ok(
    chunk.type === "data" &&
      chunk.data.length === 2 * MiB &&
      chunk.data.subarray(0, MiB).equals(pattern(MiB, MiB)),
  );

  c.request(P.NBD_CMD_READ, SIZE, 512, 3n);
  const err = await c.reply();
  const ec = P.decodeChunkPayload((err.header as P.ChunkHeader).type, err.payload);
  assert.ok(ec.type === "error" && ec.error === P.NBD_EINVAL && /past the end/.test(ec.message));
  c.destroy();
});

test("BLOCK_STATUS: extents match the image; REQ_ONE returns one extent", async () => {
  const c = await client();
  await c.go("disk", { structured: true, meta: true });
  c.request(P.NBD_CMD_BLOCK_STATUS, 0, SIZE, 1n);
  const { header, payload } = await c.reply();
  const bs = P.decodeChunkPayload((header as P.ChunkHeader).type, payload);
  assert.ok(bs.type === "block_status");
  if (bs.type !== "block_status") return;
  assert.equal(bs.extents, [
    { length: 2 * MiB, flags: 0 },
    { length: 6 * MiB, flags: P.NBD_STATE_HOLE | P.NBD_STATE_ZERO },
    { length: MiB, flags: 0 },
    { length: 7 * MiB, flags: P.NBD_STATE_HOLE | P.NBD_STATE_ZERO },
  ]);
  c.request(P.NBD_CMD_BLOCK_STATUS, 4096, SIZE - 4096, 2n, P.NBD_CMD_FLAG_REQ_ONE);
  const one = await c.reply();
  const bs1 = P.decodeChunkPayload((one.header as P.ChunkHeader).type, one.payload);
  assert.equal(bs1.type === "block_status" && bs1.extents, [{ length: 2 * MiB - 4096, flags: 0 }]);
  c.destroy();
});

test("write, FUA write, WRITE_ZEROES (NO_HOLE, FAST_ZERO), TRIM, CACHE, FLUSH then DISC", async () => {
  const c = await client();
  const { flags } = await c.go("disk");
  assert.ok(flags & P.NBD_FLAG_SEND_FAST_ZERO && flags & P.NBD_FLAG_CAN_MULTI_CONN);
  const ok = async (cookie: bigint) => assert.equal(await c.simpleReply(), { error: 0, cookie });
  c.request(P.NBD_CMD_WRITE, 12 * MiB, 8192, 1n, 0, Buffer.alloc(8192, 0x33));
  await ok(1n);
  c.request(P.NBD_CMD_WRITE, 12 * MiB + 8192, 4096, 2n, P.NBD_CMD_FLAG_FUA, Buffer.alloc(4096, 0x44));
  await ok(2n);
  c.request(P.NBD_CMD_WRITE_ZEROES, 12 * MiB, 4096, 3n, P.NBD_CMD_FLAG_NO_HOLE);
  await ok(3n);
  c.request(P.NBD_CMD_WRITE_ZEROES, 0, 4096, 4n, P.NBD_CMD_FLAG_FAST_ZERO);
  await ok(4n);
  c.request(P.NBD_CMD_TRIM, 8 * MiB, MiB, 5n);
  await ok(5n);
  c.request(P.NBD_CMD_CACHE, 0, MiB, 6n);
  await ok(6n);
  c.request(P.NBD_CMD_FLUSH, 0, 0, 7n);
  await ok(7n);
  c.request(P.NBD_CMD_READ, 12 * MiB, 12288, 8n);
  await ok(8n);
  const back = await c.read(12288);
  assert.ok(back.subarray(0, 4096).every((x) => x === 0));
  assert.ok(back.subarray(4096, 8192).every((x) => x === 0x33));
  assert.ok(back.subarray(8192).every((x) => x === 0x44));
  c.request(P.NBD_CMD_READ, 0, 8192, 9n);
  await ok(9n);
  const z = await c.read(8192);
  assert.ok(z.subarray(0, 4096).every((x) => x === 0) && z.subarray(4096).equals(pattern(4096, 4096)));
  c.request(P.NBD_CMD_DISC, 0, 0, 10n);
  assert.is((await c.closed()).length, 0);
});

test("DISC after pipelined requests: every request is answered, then the server closes", async () => {
  const c = await client();
  await c.go("disk");
  for (let i = 0; i < 8; i++) c.request(P.NBD_CMD_READ, MiB + i * 4096, 4096, BigInt(i));
  // Writes and a flush run asynchronously: several are still running when DISC arrives.
  for (let i = 0; i < 3; i++)
    c.request(P.NBD_CMD_WRITE, 14 * MiB + i * 4096, 4096, 50n + BigInt(i), 0, Buffer.alloc(4096, 0x77));
  c.request(P.NBD_CMD_FLUSH, 0, 0, 100n);
  c.request(P.NBD_CMD_DISC, 0, 0, 101n);
  const cookies: bigint[] = [];
  for (let i = 0; i < 12; i++) {
    const r = await c.simpleReply();
    assert.is(r.error, 0);
    cookies.push(r.cookie);
    if (r.cookie < 50n) assert.ok((await c.read(4096)).equals(pattern(MiB + Number(r.cookie) * 4096, 4096)));
  }
  assert.equal(
    cookies.sort((a, b) => Number(a - b)),
    [0n, 1n, 2n, 3n, 4n, 5n, 6n, 7n, 50n, 51n, 52n, 100n],
  );
  assert.is((await c.closed()).length, 0, "nothing after the last reply, then close");
});

test("pipelined requests are all answered, each with its own data", async () => {
  const c = await client();
  await c.go("disk");
  const n = 200;
  for (let i = 0; i < n; i++)
    c.request(P.NBD_CMD_READ, 4096 + ((i * 7919 * 512) % (2 * MiB - 8192)), 4096, BigInt(i));
  const seen = new Set<bigint>();
  for (let i = 0; i < n; i++) {
    const r = await c.simpleReply();
    assert.is(r.error, 0);
    const off = 4096 + ((Number(r.cookie) * 7919 * 512) % (2 * MiB - 8192));
    assert.ok((await c.read(4096)).equals(pattern(off, 4096)), `cookie ${r.cookie}`);
    seen.add(r.cookie);
  }
  assert.is(seen.size, n);
  c.destroy();
});

test("backpressure: a client that does not read replies cannot make the server buffer everything", async () => {
  const c = await client();
  await c.go("disk");
  c.sock.pause(); // stop reading replies
  const n = 128; // 128 x 4 MiB = 512 MiB of replies requested
  const base = process.memoryUsage().arrayBuffers;
  for (let i = 0; i < n; i++) c.request(P.NBD_CMD_READ, (i % 4) * 4 * MiB, 4 * MiB, BigInt(i));
  let peak = 0;
  for (let i = 0; i < 20; i++) {
    await new Promise((r) => setTimeout(r, 25));
    peak = Math.max(peak, process.memoryUsage().arrayBuffers - base);
  }
  assert.ok(peak < 200 * MiB, `server buffered ${Math.round(peak / MiB)} MiB`);
  c.sock.resume();
  const file = readFileSync(img);
  for (let i = 0; i < n; i++) {
    const r = await c.simpleReply();
    assert.is(r.error, 0);
    const off = (Number(r.cookie) % 4) * 4 * MiB;
    // Replies that did not fit the socket went out partly zero-copy, partly queued: check them.
    assert.ok(
      (await c.read(4 * MiB, 20_000)).equals(file.subarray(off, off + 4 * MiB)),
      `cookie ${r.cookie}`,
    );
  }
  c.destroy();
  await healthy();
});

test.run();
