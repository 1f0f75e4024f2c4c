// Fuzz-style: random and mutated-valid bytes into the pure decoders and the handshake state
// machine (only `need`, a value, or ProtocolError may come out), then into a live server
// (it stays up, leaks no connections, and serves a healthy client afterwards).
import { join } from "node:path";
import * as assert from "uvu/assert";
import type { Export } from "../../services/block-server/export/export.js";
import { ExportRegistry } from "../../services/block-server/export/registry.js";
import { TargetBackend } from "../../services/block-server/export/target.js";
import * as P from "../../services/block-server/nbd/protocol/index.js";
import { Handshake } from "../../services/block-server/nbd/server/index.js";
import { seededRng } from "../../services/placement/policies/random.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";
import { makeImage, pattern, RawClient, startServer } from "./fixtures/nbd.js";

// Seeded so failures reproduce.
const rand = seededRng(20261126);
const int = (n: number) => Math.floor(rand() * n);

function randomBytes(max: number): Buffer {
  const b = Buffer.alloc(int(max + 1));
  for (let i = 0; i < b.length; i++) b[i] = int(256);
  return b;
}

/** Flip, overwrite, insert, delete or truncate a few bytes of a valid message. */
function mutate(valid: Buffer): Buffer {
  let b = Buffer.from(valid);
  const ops = 1 + int(3);
  for (let k = 0; k < ops; k++) {
    const at = b.length ? int(b.length) : 0;
    switch (int(5)) {
      case 0:
        if (b.length) b[at] ^= 1 << int(8);
        break;
      case 1:
        if (b.length) b[at] = [0, 0xff, 0x7f, 0x80][int(4)];
        break;
      case 2:
        b = Buffer.concat([b.subarray(0, at), randomBytes(8), b.subarray(at)]);
        break;
      case 3:
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1 + int(4))]);
        break;
      default:
        b = b.subarray(0, at);
    }
  }
  return b;
}

const validOptions = [
  P.encodeOption(P.NBD_OPT_GO, P.encodeInfoRequest({ name: "disk", infos: [1, 2, 3] })),
  P.encodeOption(P.NBD_OPT_INFO, P.encodeInfoRequest({ name: "", infos: [] })),
  P.encodeOption(P.NBD_OPT_LIST),
  P.encodeOption(P.NBD_OPT_STRUCTURED_REPLY),
  P.encodeOption(
    P.NBD_OPT_SET_META_CONTEXT,
    P.encodeMetaContextRequest({ name: "disk", queries: [P.BASE_ALLOCATION] }),
  ),
  P.encodeOption(
    P.NBD_OPT_LIST_META_CONTEXT,
    P.encodeMetaContextRequest({ name: "disk", queries: ["base:"] }),
  ),
  P.encodeOption(P.NBD_OPT_EXPORT_NAME, Buffer.from("disk")),
  P.encodeOption(P.NBD_OPT_ABORT),
];
const validRequests = [
  P.encodeRequest({ type: P.NBD_CMD_READ, flags: 0, cookie: 1n, offset: 0, length: 4096 }),
  P.encodeRequest({
    type: P.NBD_CMD_BLOCK_STATUS,
    flags: P.NBD_CMD_FLAG_REQ_ONE,
    cookie: 2n,
    offset: 4096,
    length: 65536,
  }),
  Buffer.concat([
    P.encodeRequest({
      type: P.NBD_CMD_WRITE,
      flags: P.NBD_CMD_FLAG_FUA,
      cookie: 3n,
      offset: 8192,
      length: 16,
    }),
    Buffer.alloc(16, 0x61),
  ]),
  P.encodeRequest({
    type: P.NBD_CMD_WRITE_ZEROES,
    flags: P.NBD_CMD_FLAG_NO_HOLE,
    cookie: 4n,
    offset: 0,
    length: 512,
  }),
  P.encodeRequest({ type: P.NBD_CMD_FLUSH, flags: 0, cookie: 5n, offset: 0, length: 0 }),
];
const validReplies = [
  P.encodeOptionReply(P.NBD_OPT_GO, P.NBD_REP_INFO, P.encodeInfoExport(1 << 30, 0x1ff)),
  P.encodeOptionReply(P.NBD_OPT_GO, P.NBD_REP_INFO, P.encodeInfoBlockSize(1, 4096, 1 << 25)),
  P.encodeOptionReply(P.NBD_OPT_LIST, P.NBD_REP_SERVER, P.encodeServerReply("disk", "d")),
  P.encodeOptionReply(
    P.NBD_OPT_SET_META_CONTEXT,
    P.NBD_REP_META_CONTEXT,
    P.encodeMetaContextReply(1, "base:allocation"),
  ),
  P.encodeOptionError(9, P.NBD_REP_ERR_UNSUP, "no"),
];
const validChunks = [
  Buffer.concat([P.encodeOffsetDataHeader(0, 1n, 0, 8), Buffer.alloc(8, 1)]),
  P.encodeOffsetHoleChunk(1, 1n, 4096, 4096),
  P.encodeBlockStatusChunk(1, 2n, 1, [{ length: 4096, flags: 3 }]),
  P.encodeErrorChunk(1, 3n, P.NBD_EIO, "boom", 99),
  P.encodeErrorChunk(1, 3n, P.NBD_EIO, "boom"),
  P.encodeSimpleReply(0, 9n),
];

/** Runs f; anything thrown other than ProtocolError fails the test. */
function only(what: string, input: Buffer, f: () => unknown): void {
  try {
    const r = f() as { need?: number; consumed?: number } | undefined;
    if (r && typeof r === "object" && "need" in r)
      assert.ok(typeof r.need === "number" && r.need > 0, `${what}: bad need`);
    if (r && typeof r === "object" && "consumed" in r)
      assert.ok(
        r.consumed! > 0 && r.consumed! <= input.length,
        `${what}: consumed ${r.consumed} of ${input.length}`,
      );
  } catch (e) {
    if (!(e instanceof P.ProtocolError)) {
      throw new Error(
        `${what} threw ${(e as Error).name}: ${(e as Error).message} on ${input.toString("hex")}`,
      );
    }
  }
}

const pick = <T>(xs: T[]) => xs[int(xs.length)];

test("decoders: 5000 random and mutated streams never throw anything but ProtocolError", () => {
  let protocolErrors = 0;
  const countingOnly = (what: string, input: Buffer, f: () => unknown) => {
    try {
      f();
    } catch (e) {
      if (e instanceof P.ProtocolError) protocolErrors++;
    }
    only(what, input, f);
  };
  for (let i = 0; i < 5000; i++) {
    const opt = i % 2 ? randomBytes(64) : mutate(pick(validOptions));
    countingOnly("decodeOption", opt, () => P.decodeOption(opt));
    const payload = opt.subarray(16);
    countingOnly("decodeInfoRequest", payload, () => P.decodeInfoRequest(payload));
    countingOnly("decodeMetaContextRequest", payload, () => P.decodeMetaContextRequest(payload));
    countingOnly("decodeExportName", payload, () => P.decodeExportName(payload));
    const req = i % 2 ? randomBytes(40) : mutate(pick(validRequests));
    countingOnly("decodeRequest", req, () => P.decodeRequest(req));
    const rep = i % 2 ? randomBytes(40) : mutate(pick(validReplies));
    countingOnly("decodeOptionReply", rep, () => {
      const d = P.decodeOptionReply(rep);
      if (!("need" in d)) P.parseOptionReply(d.value);
      return d;
    });
    const ch = i % 2 ? randomBytes(48) : mutate(pick(validChunks));
    countingOnly("decodeReplyHeader", ch, () => P.decodeReplyHeader(ch));
    countingOnly("decodeChunkPayload", ch, () =>
      P.decodeChunkPayload(ch.length ? ch[0] | (ch[1] << 8) : 0, ch.subarray(2)),
    );
    const g = i % 2 ? randomBytes(20) : mutate(P.encodeGreeting(3));
    countingOnly("decodeGreeting", g, () => P.decodeGreeting(g));
  }
  assert.ok(protocolErrors > 1000, `only ${protocolErrors} protocol errors: the fuzzer is not reaching them`);
});

test("handshake state machine: 3000 mutated sessions end in need, a step, or ProtocolError", () => {
  const tmp = tempDir("vmhop-nbd-fuzz-hs-");
  const path = join(tmp.path, "x.img");
  makeImage(path, 1 << 20);
  const reg = new ExportRegistry();
  reg.add({ name: "disk", backend: new TargetBackend(path) });
  const lookup = { resolve: (n: string): Export | undefined => reg.resolve(n), list: () => reg.list() };
  let entered = 0;
  try {
    for (let i = 0; i < 3000; i++) {
      const hs = new Handshake(lookup);
      const parts = [P.encodeClientFlags(int(4) ? 3 : int(2 ** 32))];
      for (let k = int(5); k >= 0; k--) parts.push(int(3) ? mutate(pick(validOptions)) : pick(validOptions));
      let input: Buffer = Buffer.concat(parts);
      if (int(4) === 0) input = randomBytes(200);
      try {
        for (let guard = 0; guard < 100; guard++) {
          const r = hs.step(input);
          if ("need" in r || "wait" in r) break; // this lookup has no exports being created
          assert.ok(r.consumed > 0 && r.consumed <= input.length);
          input = input.subarray(r.consumed);
          if (r.done) entered++;
          if (r.done || r.hangup) break;
        }
      } catch (e) {
        if (!(e instanceof P.ProtocolError)) throw new Error(`handshake threw ${(e as Error).message}`);
      }
    }
  } finally {
    void reg.clear();
    tmp.cleanup();
  }
  assert.ok(entered > 100, `only ${entered} sessions reached transmission`);
});

test("live server: 300 hostile connections, then a healthy client is served", async () => {
  const tmp = tempDir("vmhop-nbd-fuzz-live-");
  const img = join(tmp.path, "disk.img");
  makeImage(img, 1 << 20, [[0, 1 << 20]]);
  const srv = await startServer(tmp.path, [{ name: "disk", path: img }]);
  try {
    const one = async () => {
      const c = await RawClient.connect(srv.port);
      const stream: Buffer[] = [];
      const mode = int(3);
      if (mode === 0) stream.push(randomBytes(300));
      else {
        stream.push(P.encodeClientFlags(3));
        if (mode === 1) for (let k = int(4); k >= 0; k--) stream.push(mutate(pick(validOptions)));
        else {
          stream.push(P.encodeOption(P.NBD_OPT_GO, P.encodeInfoRequest({ name: "disk", infos: [] })));
          for (let k = int(6); k >= 0; k--)
            stream.push(int(2) ? mutate(pick(validRequests)) : pick(validRequests));
        }
      }
      c.write(Buffer.concat(stream));
      await new Promise((r) => setTimeout(r, 5 + int(20)));
      c.destroy();
    };
    for (let batch = 0; batch < 15; batch++) await Promise.all(Array.from({ length: 20 }, one));
    for (let i = 0; i < 100 && srv.server.connectionCount > 0; i++)
      await new Promise((r) => setTimeout(r, 20));
    assert.is(srv.server.connectionCount, 0, "connections leaked");
    const c = await RawClient.connect(srv.port);
    await c.go("disk");
    c.request(P.NBD_CMD_READ, 65536, 4096, 1n);
    assert.equal(await c.simpleReply(), { error: 0, cookie: 1n });
    const back = await c.read(4096);
    // Fuzzed writes may have hit [8192, 8208) or zeroed [0, 512); 64 KiB on is untouched.
    assert.ok(back.equals(pattern(65536, 4096)));
    c.destroy();
  } finally {
    await srv.close();
    tmp.cleanup();
  }
});

test.run();
