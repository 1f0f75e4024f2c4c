import * as assert from "uvu/assert";
import * as P from "../../services/block-server/nbd/protocol/index.js";
import { test } from "../helpers/uvu.js";

function value<T>(d: P.Decoded<T>): { value: T; consumed: number } {
  if ("need" in d) throw new Error(`unexpected need ${d.need}`);
  return d;
}

test("greeting round-trips and rejects bad magics", () => {
  const g = P.encodeGreeting(P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES);
  assert.is(g.length, 18);
  assert.equal(P.decodeGreeting(g.subarray(0, 10)), { need: 16 });
  assert.equal(value(P.decodeGreeting(g)), { value: { handshakeFlags: 3 }, consumed: 18 });
  const bad = Buffer.from(g);
  bad[0] = 0;
  assert.throws(() => P.decodeGreeting(bad), /bad magic/);
  const old = Buffer.from(g);
  old.writeBigUInt64BE(P.OLDSTYLE_MAGIC, 8);
  assert.throws(() => P.decodeGreeting(old), /oldstyle/);
});

test("option request: incremental, bad magic and huge length are ProtocolErrors", () => {
  const data = P.encodeInfoRequest({ name: "disk0", infos: [P.NBD_INFO_BLOCK_SIZE, P.NBD_INFO_NAME] });
  const opt = P.encodeOption(P.NBD_OPT_GO, data);
  for (let n = 0; n < opt.length; n++) {
    const d = P.decodeOption(opt.subarray(0, n));
    assert.ok("need" in d && d.need > n, `prefix ${n}`);
  }
  const { value: o, consumed } = value(P.decodeOption(Buffer.concat([opt, Buffer.from([1, 2])])));
  assert.is(consumed, opt.length);
  assert.is(o.option, P.NBD_OPT_GO);
  assert.equal(P.decodeInfoRequest(o.data), { name: "disk0", infos: [3, 1] });
  const bad = Buffer.from(opt);
  bad[3] ^= 1;
  assert.throws(
    () => P.decodeOptionHeader(bad),
    (e: Error) => e instanceof P.ProtocolError,
  );
  const huge = Buffer.from(opt);
  huge.writeUInt32BE(0xffffffff, 12);
  assert.throws(() => P.decodeOptionHeader(huge), /exceeds limit/);
  assert.throws(() => P.decodeInfoRequest(data.subarray(0, data.length - 1)), /truncated/);
});

test("meta context request round-trips", () => {
  const req = { name: "", queries: ["base:allocation", "qemu:dirty-bitmap:x"] };
  assert.equal(P.decodeMetaContextRequest(P.encodeMetaContextRequest(req)), req);
  assert.throws(
    () => P.decodeMetaContextRequest(Buffer.from([0, 0, 0, 9])),
    (e: Error) => e instanceof P.ProtocolError,
  );
});

test("option replies: ack, server, info, meta context, error", () => {
  const parse = (b: Buffer) => P.parseOptionReply(value(P.decodeOptionReply(b)).value);
  assert.equal(parse(P.encodeOptionReply(P.NBD_OPT_GO, P.NBD_REP_ACK)), { kind: "ack", option: 7 });
  assert.equal(
    parse(P.encodeOptionReply(P.NBD_OPT_LIST, P.NBD_REP_SERVER, P.encodeServerReply("a", "disk A"))),
    {
      kind: "server",
      option: 3,
      name: "a",
      description: "disk A",
    },
  );
  const info = (b: Buffer) => parse(P.encodeOptionReply(P.NBD_OPT_GO, P.NBD_REP_INFO, b));
  assert.equal(info(P.encodeInfoExport(2 ** 40 + 5, 0x1ff)), {
    kind: "info",
    option: 7,
    info: { info: "export", size: 2 ** 40 + 5, transmissionFlags: 0x1ff },
  });
  assert.equal(info(P.encodeInfoBlockSize(1, 4096, 32 << 20)), {
    kind: "info",
    option: 7,
    info: { info: "block_size", minimum: 1, preferred: 4096, maximum: 32 << 20 },
  });
  assert.equal((info(P.encodeInfoName("n")) as { info: P.Info }).info, { info: "name", name: "n" });
  assert.equal((info(P.encodeInfoDescription("d")) as { info: P.Info }).info, {
    info: "description",
    description: "d",
  });
  assert.equal(
    parse(
      P.encodeOptionReply(
        P.NBD_OPT_SET_META_CONTEXT,
        P.NBD_REP_META_CONTEXT,
        P.encodeMetaContextReply(1, "base:allocation"),
      ),
    ),
    { kind: "meta_context", option: 10, id: 1, name: "base:allocation" },
  );
  assert.equal(parse(P.encodeOptionError(99, P.NBD_REP_ERR_UNSUP, "no")), {
    kind: "error",
    option: 99,
    type: P.NBD_REP_ERR_UNSUP,
    message: "no",
  });
  assert.equal(P.decodeOptionReply(Buffer.alloc(5)), { need: 20 });
  assert.throws(() => P.decodeOptionReply(Buffer.alloc(20)), /bad magic/);
});

test("export name reply honours NO_ZEROES", () => {
  const short = P.encodeExportNameReply(1 << 20, 3, true);
  const full = P.encodeExportNameReply(1 << 20, 3, false);
  assert.is(short.length, 10);
  assert.is(full.length, 134);
  assert.equal(value(P.decodeExportNameReply(full, false)).value, { size: 1 << 20, transmissionFlags: 3 });
  assert.equal(P.decodeExportNameReply(short, false), { need: 134 });
});

test("request header round-trips at an offset", () => {
  const req = {
    flags: P.NBD_CMD_FLAG_FUA,
    type: P.NBD_CMD_WRITE,
    cookie: 0xdeadbeefcafen,
    offset: 2 ** 45 + 512,
    length: 4096,
  };
  const b = Buffer.concat([Buffer.alloc(3), P.encodeRequest(req)]);
  assert.equal(value(P.decodeRequest(b, 3)), { value: req, consumed: 28 });
  assert.equal(P.decodeRequest(b, 4), { need: 28 });
  b[3] = 0;
  assert.throws(() => P.decodeRequest(b, 3), /bad magic/);
});

test("simple and structured replies", () => {
  const s = value(P.decodeReplyHeader(P.encodeSimpleReply(P.NBD_EIO, 7n)));
  assert.equal(s.value, { kind: "simple", error: 5, cookie: 7n });
  const dh = P.encodeOffsetDataHeader(P.NBD_REPLY_FLAG_DONE, 9n, 4096, 3);
  const chunk = Buffer.concat([dh, Buffer.from("abc")]);
  const h = value(P.decodeReplyHeader(chunk));
  assert.equal(h.value, {
    kind: "structured",
    flags: 1,
    type: P.NBD_REPLY_TYPE_OFFSET_DATA,
    cookie: 9n,
    length: 11,
  });
  const c = P.decodeChunkPayload(P.NBD_REPLY_TYPE_OFFSET_DATA, chunk.subarray(20));
  assert.equal(c, { type: "data", offset: 4096, data: Buffer.from("abc") });

  const hole = P.encodeOffsetHoleChunk(0, 9n, 8192, 512);
  const hh = value(P.decodeStructuredChunkHeader(hole)).value;
  assert.equal(P.decodeChunkPayload(hh.type, hole.subarray(20)), { type: "hole", offset: 8192, length: 512 });

  const bs = P.encodeBlockStatusChunk(1, 1n, 1, [
    { length: 4096, flags: 3 },
    { length: 512, flags: 0 },
  ]);
  assert.equal(P.decodeChunkPayload(P.NBD_REPLY_TYPE_BLOCK_STATUS, bs.subarray(20)), {
    type: "block_status",
    contextId: 1,
    extents: [
      { length: 4096, flags: 3 },
      { length: 512, flags: 0 },
    ],
  });
  const e = P.encodeErrorChunk(1, 2n, P.NBD_EINVAL, "bad", 77);
  assert.equal(P.decodeChunkPayload(P.NBD_REPLY_TYPE_ERROR_OFFSET, e.subarray(20)), {
    type: "error",
    error: 22,
    message: "bad",
    offset: 77,
  });
  const e2 = P.encodeErrorChunk(1, 2n, P.NBD_EIO, "x");
  assert.equal(P.decodeChunkPayload(P.NBD_REPLY_TYPE_ERROR, e2.subarray(20)), {
    type: "error",
    error: 5,
    message: "x",
  });
  assert.equal(value(P.decodeReplyHeader(P.encodeNoneChunk(3n))).value, {
    kind: "structured",
    flags: 1,
    type: 0,
    cookie: 3n,
    length: 0,
  });
  assert.throws(
    () => P.decodeChunkPayload(P.NBD_REPLY_TYPE_OFFSET_HOLE, Buffer.alloc(3)),
    (e: Error) => e instanceof P.ProtocolError,
  );
  assert.throws(() => P.decodeReplyHeader(Buffer.alloc(20)), /bad magic/);
});

test("errno mapping", () => {
  assert.is(P.nbdErrno("ENOSPC"), 28);
  assert.is(P.nbdErrno("EROFS"), P.NBD_EPERM);
  assert.is(P.nbdErrno("EWHATEVER"), P.NBD_EIO);
  assert.is(P.nbdErrnoOf({ errno: "ENOTSUP" }), 95);
  assert.is(P.nbdErrnoOf(Object.assign(new Error("x"), { code: "EIO" })), 5);
  assert.is(P.nbdErrnoOf("string"), 5);
  assert.is(P.nbdErrorName(22), "EINVAL");
});

test.run();
