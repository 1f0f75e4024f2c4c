// The return path's codec and splicer (channel/return-path.ts): requests of the source
// page-server's own go in between the destination's messages, and QEMU at the source (modelled
// here by how it reads a request against "the block of the last REQ_PAGES_ID") reads every
// request, the destination's and ours, against the block it was meant for.
import * as assert from "uvu/assert";
import {
  decodePageRequest,
  encodePageRequest,
  type PageRequest,
  ReturnPathSplicer,
  RP_PONG,
  RP_RECV_BITMAP,
  RP_REQ_PAGES,
  RP_REQ_PAGES_ID,
} from "../../services/page-server/channel/return-path.js";
import { test } from "../helpers/uvu.js";

const pong = (v: number) => {
  const b = Buffer.alloc(8);
  b.writeUInt16BE(RP_PONG, 0);
  b.writeUInt16BE(4, 2);
  b.writeUInt32BE(v, 4);
  return b;
};

/** QEMU 7.2's source_return_path_thread, as far as requests go: each request with its block. */
function sourceReads(stream: Buffer): { block: string; start: number; other?: number }[] {
  const out: { block: string; start: number; other?: number }[] = [];
  let last: string | undefined;
  for (let at = 0; at < stream.length; ) {
    const type = stream.readUInt16BE(at);
    const end = at + 4 + stream.readUInt16BE(at + 2);
    const msg = stream.subarray(at, end);
    if (type === RP_REQ_PAGES_ID || type === RP_REQ_PAGES) {
      const r = decodePageRequest(msg)!;
      assert.ok(r, "a request the source could not read");
      if (r.block !== undefined) last = r.block;
      assert.ok(last, "REQ_PAGES before any REQ_PAGES_ID: the source would refuse it");
      out.push({ block: last!, start: r.start });
    } else out.push({ block: "", start: -1, other: type });
    at = end;
  }
  return out;
}

/** The destination's requests as QEMU writes them (naming a block only when it changes). */
function destination(reqs: { block: string; start: number }[]): Buffer[] {
  let last: string | undefined;
  return reqs.map((r) => {
    const named = r.block === last ? undefined : r.block;
    last = r.block;
    return encodePageRequest({ block: named, start: r.start, length: 4096 });
  });
}

test("page requests encode as QEMU writes them and decode back", () => {
  const id = encodePageRequest({ block: "pc.ram", start: 0x6329000, length: 4096 });
  assert.equal(
    id.toString("hex"),
    "0003" + "0013" + "0000000006329000" + "00001000" + "06" + Buffer.from("pc.ram").toString("hex"),
  );
  assert.equal(decodePageRequest(id), { block: "pc.ram", start: 0x6329000, length: 4096 });
  const plain = encodePageRequest({ start: 8192, length: 4096 });
  assert.is(plain.readUInt16BE(0), RP_REQ_PAGES);
  assert.equal(decodePageRequest(plain), { start: 8192, length: 4096 });
  assert.is(decodePageRequest(pong(1)), null);
  assert.throws(() => encodePageRequest({ block: "x".repeat(256), start: 0, length: 4096 }), /RAMBlock name/);
  assert.throws(() => encodePageRequest({ start: -1, length: 4096 }), /page start/);
});

test("the destination's messages pass whole and unchanged, however the bytes are cut", () => {
  const msgs = [
    pong(7),
    ...destination([
      { block: "pc.ram", start: 4096 },
      { block: "pc.ram", start: 8192 },
    ]),
  ];
  const stream = Buffer.concat(msgs);
  const sp = new ReturnPathSplicer();
  const out: Buffer[] = [];
  for (let i = 0; i < stream.length; i++) out.push(...sp.push(stream.subarray(i, i + 1)));
  assert.equal(Buffer.concat(out), stream);
  assert.is(sp.gaveUp, undefined);
});

test("our requests go in at a boundary at once, or after the message under way", () => {
  const sp = new ReturnPathSplicer();
  const ours: PageRequest[] = [
    { block: "pc.ram", start: 0x1000, length: 4096 },
    { start: 0x3000, length: 4096 },
  ];
  const now = sp.request(ours);
  assert.is(now.length, 2, "at a boundary: written at once");
  const half = pong(1);
  const held = [...sp.push(half.subarray(0, 3)), ...sp.request([{ start: 0x5000, length: 4096 }])];
  assert.is(held.length, 0, "inside a message: held");
  const rest = sp.push(half.subarray(3));
  assert.equal(
    Buffer.concat(rest),
    Buffer.concat([half, encodePageRequest({ start: 0x5000, length: 4096 })]),
  );
  assert.equal(
    sourceReads(Buffer.concat([...now, ...rest])).map((r) => [r.block, r.start]),
    [
      ["pc.ram", 0x1000],
      ["pc.ram", 0x3000],
      ["", -1],
      ["pc.ram", 0x5000],
    ],
  );
});

test("after ours named another block, the destination's next bare request is made to name its own", () => {
  const sp = new ReturnPathSplicer();
  const [a, b, c] = destination([
    { block: "pc.bios", start: 0 },
    { block: "pc.bios", start: 4096 },
    { block: "pc.bios", start: 8192 },
  ]);
  const out = [
    ...sp.push(a),
    ...sp.request([{ block: "pc.ram", start: 0x7000, length: 4096 }]),
    ...sp.push(b),
  ];
  out.push(...sp.push(c));
  assert.equal(
    sourceReads(Buffer.concat(out)).map((r) => [r.block, r.start]),
    [
      ["pc.bios", 0],
      ["pc.ram", 0x7000],
      ["pc.bios", 4096],
      ["pc.bios", 8192],
    ],
  );
  assert.is(out[2].readUInt16BE(0), RP_REQ_PAGES_ID, "rewritten to name its block");
  assert.is(out[3].readUInt16BE(0), RP_REQ_PAGES, "the one after passes as it came");
});

test("random interleavings and cuts: every request is read against the block it was meant for", () => {
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed % n;
  };
  const blocks = ["pc.ram", "pc.bios", "pc.rom"];
  for (let round = 0; round < 200; round++) {
    const sp = new ReturnPathSplicer();
    const dest = Array.from({ length: 1 + rnd(12) }, (_, i) => ({
      block: blocks[rnd(3)],
      start: (i + 1) * 4096,
    }));
    const bytes = Buffer.concat([pong(round), ...destination(dest)]);
    const meant: [string, number][] = [];
    const out: Buffer[] = [];
    let at = 0;
    let ourStart = 0x100000;
    const ours: [string, number][] = [];
    while (at < bytes.length) {
      const n = 1 + rnd(30);
      out.push(...sp.push(bytes.subarray(at, at + n)));
      at += n;
      if (rnd(3) === 0) {
        const block = blocks[rnd(3)];
        ourStart += 4096;
        ours.push([block, ourStart]);
        out.push(...sp.request([{ block, start: ourStart, length: 4096 }]));
      }
    }
    meant.push(...dest.map((d) => [d.block, d.start] as [string, number]), ...ours);
    const read = sourceReads(Buffer.concat(out))
      .filter((r) => r.other === undefined)
      .map((r) => [r.block, r.start] as [string, number]);
    const byStart = (x: [string, number], y: [string, number]) => x[1] - y[1];
    assert.equal(read.sort(byStart), meant.sort(byStart), `round ${round}`);
  }
});

test("a bitmap or an unknown message ends framing: bytes pass as they come, our requests are dropped", () => {
  const sp = new ReturnPathSplicer();
  assert.is(sp.push(pong(1).subarray(0, 2)).length, 0);
  assert.is(sp.request([{ block: "pc.ram", start: 0, length: 4096 }]).length, 0);
  const bitmap = Buffer.alloc(4 + 7 + 20);
  bitmap.writeUInt16BE(RP_RECV_BITMAP, 0);
  bitmap.writeUInt16BE(7, 2);
  // The held request would go after the PONG; the bitmap in the same read ends framing first.
  const out = sp.push(Buffer.concat([pong(1).subarray(2), bitmap]));
  assert.equal(Buffer.concat(out), Buffer.concat([pong(1), bitmap]));
  assert.match(sp.gaveUp ?? "", /bitmap/);
  const after = Buffer.from([1, 2, 3]);
  assert.equal(sp.push(after), [after]);
  assert.equal(sp.request([{ block: "pc.ram", start: 0, length: 4096 }]), []);
  const unknown = new ReturnPathSplicer();
  const odd = Buffer.from([0, 99, 0, 0]);
  assert.equal(unknown.push(odd), [odd]);
  assert.match(unknown.gaveUp ?? "", /type 99/);
});
test.run();
