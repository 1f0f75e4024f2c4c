// The post-copy fault timing's pieces, pure: the return-path and RAM-stream codecs on
// hand-made bytes and on bytes captured from the real QEMU 7.2 here (a post-copy with the
// urgent lane through the relay: test/fixtures/qemu-7.2-postcopy), fed whole, byte by byte
// and in odd chunks; the fault timer's pairing and cap; the latency summary; the observer
// stopping (once, said in the log) on a stream it cannot follow.
import { readFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import * as assert from "uvu/assert";
import { createLogger } from "../../services/common/log.js";
import {
  RP_PONG,
  RP_RECV_BITMAP,
  RP_REQ_PAGES,
  RP_REQ_PAGES_ID,
  RP_SHUT,
} from "../../services/page-server/channel/return-path.js";
import {
  FaultTimer,
  MAX_OUTSTANDING,
  RECENT_PAGES,
} from "../../services/page-server/postcopy/fault-timer.js";
import { LatencySummary } from "../../services/page-server/postcopy/latency-summary.js";
import { FaultObserver } from "../../services/page-server/postcopy/observer.js";
import { Flag, RamStreamDecoder, Section } from "../../services/page-server/postcopy/ram-stream.js";
import { type PageRequest, ReturnPathDecoder } from "../../services/page-server/postcopy/return-path.js";
import { MAX_HELD, QemuStreamError } from "../../services/page-server/postcopy/step-reader.js";
import { test } from "../helpers/uvu.js";

const fixture = (name: string) =>
  gunzipSync(readFileSync(new URL(`../fixtures/qemu-7.2-postcopy/${name}.bin.gz`, import.meta.url)));

/** Feeds `bytes` in pieces of `size` (0: whole). */
function feed(push: (b: Buffer) => void, bytes: Buffer, size: number): void {
  if (size === 0) push(bytes);
  else for (let at = 0; at < bytes.length; at += size) push(bytes.subarray(at, at + size));
}
const SIZES = [0, 1, 7, 4099];

function requests(bytes: Buffer, size: number): PageRequest[] {
  const got: PageRequest[] = [];
  const d = new ReturnPathDecoder({ request: (r) => got.push(r) });
  feed((b) => d.push(b), bytes, size);
  return got;
}

/** The pages seen, with "switch" where the device-state package passed. */
function pages(bytes: Buffer, main: boolean, size: number): { pages: string[]; done: boolean } {
  const got: string[] = [];
  const d = new RamStreamDecoder(main, {
    page: (b, o) => got.push(`${b}@${o.toString(16)}`),
    switched: () => got.push("switch"),
  });
  feed((b) => d.push(b), bytes, size);
  return { pages: got, done: d.done };
}

// ---- hand-made bytes ----
const u8 = (n: number) => Buffer.from([n]);
const be16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
const be32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const be64 = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
};
const str8 = (s: string) => Buffer.concat([u8(s.length), Buffer.from(s, "latin1")]);
const rp = (type: number, payload: Buffer) => Buffer.concat([be16(type), be16(payload.length), payload]);
const cmd = (c: number, data: Buffer) =>
  Buffer.concat([u8(Section.Command), be16(c), be16(data.length), data]);
const rec = (offset: number, flags: number, block?: string) =>
  Buffer.concat([be64(offset + flags), block ? str8(block) : Buffer.alloc(0)]);
const page = (fill: number) => Buffer.alloc(4096, fill);

test("return path: page requests named and continued, other messages passed over", () => {
  const bytes = Buffer.concat([
    rp(RP_PONG, be32(1)),
    rp(RP_REQ_PAGES_ID, Buffer.concat([be64(0x63a6000), be32(4096), str8("pc.ram")])),
    rp(RP_REQ_PAGES, Buffer.concat([be64(0x1_0000_2000), be32(4096)])),
    rp(RP_REQ_PAGES_ID, Buffer.concat([be64(0x1000), be32(0x200000), str8("/rom@etc/acpi/tables")])),
    rp(RP_SHUT, be32(0)),
  ]);
  for (const size of SIZES)
    assert.equal(
      requests(bytes, size),
      [
        { block: "pc.ram", start: 0x63a6000, length: 4096 },
        { block: "pc.ram", start: 0x1_0000_2000, length: 4096 },
        { block: "/rom@etc/acpi/tables", start: 0x1000, length: 0x200000 },
      ],
      `pieces of ${size}`,
    );
  // After a recovery's RECV_BITMAP the raw bitmap follows: nothing after it is read.
  let recovered = 0;
  const d = new ReturnPathDecoder({ request: () => assert.unreachable(), recovery: () => recovered++ });
  d.push(Buffer.concat([rp(RP_RECV_BITMAP, str8("pc.ram")), be64(8), Buffer.alloc(8, 0xff)]));
  assert.is(recovered, 1);
});

test("return path: malformed messages are refused clearly", () => {
  const bad = (bytes: Buffer, re: RegExp) =>
    assert.throws(
      () => requests(bytes, 0),
      (e: unknown) => e instanceof QemuStreamError && re.test((e as Error).message),
    );
  bad(rp(9, be32(0)), /unknown message type 9/);
  bad(rp(RP_REQ_PAGES, Buffer.concat([be64(0), be32(4096)])), /before any named its RAM block/);
  bad(
    rp(RP_REQ_PAGES_ID, Buffer.concat([be64(0), be32(4096), u8(9), Buffer.from("ab")])),
    /malformed page request of 15 bytes/,
  );
  bad(Buffer.concat([be16(RP_PONG), be16(0)]), /empty message/);
});

/** A main stream as QEMU 7.2 shapes it, with everything the codec follows or steps over. */
function handMadeStream(): Buffer {
  const uuid = Buffer.concat([
    u8(Section.Subsection),
    str8("configuration/uuid"),
    be32(1),
    Buffer.alloc(16, 7),
  ]);
  const caps = Buffer.concat([
    u8(Section.Subsection),
    str8("configuration/capabilities"),
    be32(1),
    be32(1),
    str8("x-ignore-shared"),
  ]);
  const fakeDevice = Buffer.concat([
    u8(Section.Full),
    be32(9),
    str8("timer"),
    be32(0),
    be32(2),
    Buffer.alloc(9),
  ]);
  return Buffer.concat([
    Buffer.from("QEVM"),
    be32(3),
    u8(Section.Configuration),
    be32(13),
    Buffer.from("pc-i440fx-7.2"),
    caps,
    uuid,
    cmd(1, Buffer.alloc(0)), // open return path
    cmd(2, be32(1)), // ping
    cmd(3, Buffer.concat([be64(4096), be64(4096)])), // post-copy advise
    // START ram: the block list (with x-ignore-shared, each block's address follows).
    u8(Section.Start),
    be32(2),
    str8("ram"),
    be32(0),
    be32(4),
    be64(0x10000 + 0x2000 + Flag.MemSize),
    str8("pc.ram"),
    be64(0x10000),
    be64(0),
    str8("pc.bios"),
    be64(0x2000),
    be64(0xfffe0000),
    rec(0, Flag.Eos),
    u8(Section.Footer),
    be32(2),
    // PART: pages of each kind, then EOS.
    u8(Section.Part),
    be32(2),
    rec(0x3000, Flag.Page, "pc.ram"),
    page(1),
    rec(0x4000, Flag.Zero | Flag.Continue),
    u8(0),
    rec(0x1000, Flag.CompressPage, "pc.bios"),
    be32(5),
    Buffer.alloc(5, 3),
    rec(0x5000, Flag.Xbzrle, "pc.ram"),
    u8(1),
    be16(6),
    Buffer.alloc(6, 4),
    rec(0, Flag.Eos),
    u8(Section.Footer),
    be32(2),
    cmd(6, Buffer.alloc(25, 1)), // discard list: stepped over
    // The package (device state, here a fake one) is skipped whole.
    cmd(7, be32(fakeDevice.length)),
    fakeDevice,
    u8(Section.Part),
    be32(2),
    rec(0x6000, Flag.Page | Flag.Continue),
    page(2),
    rec(0, Flag.Eos),
    u8(Section.End),
    be32(2),
    rec(0, Flag.Eos),
    u8(Section.Eof),
    Buffer.from("anything after EOF is not read"),
  ]);
}

test("RAM stream: a hand-made main stream, every record kind, in any pieces", () => {
  const bytes = handMadeStream();
  for (const size of SIZES) {
    const r = pages(bytes, true, size);
    assert.equal(
      r.pages,
      ["pc.ram@3000", "pc.ram@4000", "pc.bios@1000", "pc.ram@5000", "switch", "pc.ram@6000"],
      `pieces of ${size}`,
    );
    assert.ok(r.done, "EOF reached");
  }
  // The urgent lane: records only, EOS between bursts.
  const lane = Buffer.concat([
    rec(0x9000, Flag.Page, "pc.ram"),
    page(5),
    rec(0, Flag.Eos),
    rec(0xa000, Flag.Page, "pc.ram"),
    page(6),
    rec(0xb000, Flag.Zero | Flag.Continue),
    u8(0),
  ]);
  for (const size of SIZES)
    assert.equal(pages(lane, false, size).pages, ["pc.ram@9000", "pc.ram@a000", "pc.ram@b000"]);
});

test("RAM stream: what it cannot follow is refused with the reason", () => {
  const bad = (bytes: Buffer, main: boolean, re: RegExp) =>
    assert.throws(
      () => pages(bytes, main, 0),
      (e: unknown) => e instanceof QemuStreamError && re.test((e as Error).message),
    );
  bad(Buffer.from("QEVX\0\0\0\x03"), true, /no QEVM magic/);
  bad(Buffer.concat([Buffer.from("QEVM"), be32(2)]), true, /file version 2/);
  const head = Buffer.concat([Buffer.from("QEVM"), be32(3)]);
  bad(Buffer.concat([head, u8(0x42)]), true, /unknown section type 66/);
  bad(
    Buffer.concat([head, cmd(3, Buffer.concat([be64(4096), be64(65536)]))]),
    true,
    /target page size 65536/,
  );
  const block = Buffer.concat([head, u8(Section.Start), be32(3), str8("block"), be32(0), be32(1)]);
  bad(block, true, /iterative section "block" is not followed/);
  bad(Buffer.concat([head, u8(Section.Part), be32(5)]), true, /section 5 is not a RAM section/);
  bad(rec(0x1000, Flag.Page | Flag.Continue), false, /continuing no block/);
  bad(rec(0x1000, 0x80, "pc.ram"), false, /flags 0x80/);
  bad(Buffer.concat([head, u8(Section.Configuration), be32(MAX_HELD + 1)]), true, /cannot read 1025 bytes/);
});

// ---- bytes from the real QEMU 7.2 ----
test("real QEMU 7.2 bytes: the return path's requests, the urgent lane's and the main stream's pages", () => {
  const rpBytes = fixture("return-path");
  for (const size of SIZES) {
    const r = requests(rpBytes, size);
    assert.is(r.length, 35, `pieces of ${size}`);
    assert.equal(r[0], { block: "pc.ram", start: 0x63a6000, length: 4096 });
    assert.ok(r.every((q) => q.block === "pc.ram" && q.length === 4096 && q.start % 4096 === 0));
  }
  const lane = fixture("urgent-lane");
  for (const size of SIZES)
    assert.equal(pages(lane, false, size).pages, [
      "pc.ram@63a6000",
      "pc.ram@9c8d000",
      "pc.ram@9c2b000",
      "pc.ram@9c2a000",
      "pc.ram@3313000",
    ]);
  // The main stream up to just after the package: configuration, RAM's block list, the
  // discard lists, pings and the 13 KB device-state package, then the first post-copy pages.
  const main = fixture("main-stream");
  for (const size of SIZES) {
    const r = pages(main, true, size);
    assert.is(r.pages.length, 16, `pieces of ${size}`);
    assert.equal(r.pages.slice(0, 4), ["switch", "pc.ram@0", "pc.ram@1000", "pc.ram@2000"]);
    assert.is(r.pages[15], "pc.ram@e000");
    assert.not.ok(r.done);
  }
  // The first request is answered by the urgent lane's first page.
  const timer = new FaultTimer(() => {});
  timer.switched();
  timer.request(requests(rpBytes, 0)[0]!);
  timer.page("pc.ram", 0x63a6000);
  assert.is(timer.answered, 1);
});

test("fault timer: pairs each request with its page once, huge pages by their last page, bounded", () => {
  let now = 0;
  const got: number[] = [];
  const t = new FaultTimer(
    (ms) => got.push(ms),
    () => now,
  );
  t.switched();
  t.request({ block: "pc.ram", start: 0x1000, length: 4096 });
  now = 3;
  t.request({ block: "pc.ram", start: 0x1000, length: 4096 }); // a repeat keeps the first time
  t.request({ block: "big", start: 0x200000, length: 0x200000 });
  now = 10;
  t.page("pc.ram", 0x2000); // not asked for
  t.page("other", 0x1000); // same offset, other block
  t.page("pc.ram", 0x1000);
  t.page("pc.ram", 0x1000); // answered already
  now = 12;
  t.page("big", 0x200000); // a huge page is in only with its last target page
  t.page("big", 0x3ff000);
  assert.equal(got, [10, 9]);
  assert.is(t.requests, 2);
  assert.is(t.answered, 2);
  assert.is(t.waiting, 0);
  // A page that passed before it was asked for was on its way in: counted, not timed.
  t.request({ block: "pc.ram", start: 0x2000, length: 4096 });
  assert.equal([t.requests, t.inFlight, t.waiting, got.length], [3, 1, 0, 2]);
  const far = 0x1000_0000;
  for (let i = 0; i < MAX_OUTSTANDING + 5; i++)
    t.request({ block: "pc.ram", start: far + i * 4096, length: 4096 });
  assert.is(t.waiting, MAX_OUTSTANDING);
  assert.is(t.dropped, 5);
  t.page("pc.ram", far); // dropped: the oldest went first
  assert.is(t.answered, 2);
  t.page("pc.ram", far + 5 * 4096);
  assert.is(t.answered, 3);
  // Before the switch to post-copy nothing is remembered (pre-copy pages may be sent again).
  const pre = new FaultTimer(() => {});
  pre.page("pc.ram", 0x7000);
  pre.request({ block: "pc.ram", start: 0x7000, length: 4096 });
  assert.equal([pre.inFlight, pre.waiting], [0, 1]);
  // At most RECENT_PAGES are remembered, the oldest forgotten first.
  pre.switched();
  for (let i = 0; i <= RECENT_PAGES; i++) pre.page("pc.ram", 0x100000 + i * 4096);
  pre.request({ block: "pc.ram", start: 0x100000, length: 4096 });
  pre.request({ block: "pc.ram", start: 0x101000, length: 4096 });
  assert.equal([pre.inFlight, pre.waiting], [1, 2]);
  pre.finish(); // the end: what waits is dropped, nothing is held
  assert.equal([pre.waiting, pre.dropped], [0, 2]);
});

test("latency summary: count, max and quantiles within 5 %", () => {
  const s = new LatencySummary();
  assert.equal(s.figures(), { count: 0, p50Ms: 0, p99Ms: 0, maxMs: 0 });
  for (let i = 1; i <= 1000; i++) s.add(i);
  const f = s.figures();
  assert.is(f.count, 1000);
  assert.is(f.maxMs, 1000);
  assert.ok(f.p50Ms >= 500 && f.p50Ms <= 525, `p50 ${f.p50Ms}`);
  assert.ok(f.p99Ms >= 990 && f.p99Ms <= 1000, `p99 ${f.p99Ms}`);
  s.add(0);
  s.add(1e9);
  assert.is(s.figures().maxMs, 1e9);
});

test("observer: a stream it cannot follow stops the timing once, said in the log; the taps keep quiet", () => {
  const lines: string[] = [];
  const log = createLogger({}, { sink: (l) => lines.push(l), level: "info" });
  const timed: number[] = [];
  const o = new FaultObserver(log, (ms) => timed.push(ms));
  const main = o.tap({ recover: false })!;
  const lane = o.tap({ recover: false })!;
  main.toQemu(Buffer.concat([Buffer.from("QEVM"), be32(3), cmd(7, be32(0))])); // the switch
  main.fromQemu(rp(RP_REQ_PAGES_ID, Buffer.concat([be64(0x9000), be32(4096), str8("pc.ram")])));
  lane.toQemu(Buffer.concat([rec(0x9000, Flag.Page, "pc.ram"), page(1)]));
  assert.is(timed.length, 1);
  assert.is(o.figures().count, 1);
  main.toQemu(Buffer.from([0x42])); // an unknown section
  main.toQemu(Buffer.from("more garbage")); // not looked at
  lane.fromQemu(Buffer.from([0, 99, 0, 1, 0]));
  const f = o.figures();
  assert.match(f.stopped ?? "", /unknown section type 66/);
  assert.is(lines.length, 1, lines.join("\n"));
  assert.match(lines[0]!, /fault timing stopped: stream not understood/);
  assert.is(o.tap({ recover: false }), undefined);
  // A recovery's connections are not timed, said once.
  const lines2: string[] = [];
  const o2 = new FaultObserver(createLogger({}, { sink: (l) => lines2.push(l), level: "info" }));
  assert.ok(o2.tap({ recover: false }));
  assert.is(o2.tap({ recover: true }), undefined);
  assert.is(o2.tap({ recover: true }), undefined);
  assert.is(lines2.length, 1);
  assert.match(o2.figures().stopped ?? "", /recovery/);
});

test.run();
