// The compressing channel's frame codec and its "deflate only on a slow, saturated link" rule.
import { randomBytes } from "node:crypto";
import * as assert from "uvu/assert";
import {
  DrainMeter,
  SLOW_LINK_BYTES_PER_SEC,
  shouldDeflate,
  YOUNG_BYTES,
} from "../../services/page-server/channel/compress-policy.js";
import {
  FrameDecoder,
  FrameEncoder,
  MAX_FRAME,
  PLAIN_RUN,
} from "../../services/page-server/channel/frame.js";
import { ChannelProtocolError } from "../../services/page-server/channel/hello.js";
import { test } from "../helpers/uvu.js";

/** Guest-like memory: zero pages, repeated text and random bytes. */
function pages(): Buffer {
  const b = Buffer.alloc(64 << 10);
  b.write("heartbeat ".repeat(1600), 16 << 10);
  for (let i = 48 << 10; i < b.length; i++) b[i] = (i * 2654435761) >>> 24;
  return b;
}

const wire = (bufs: Buffer[][]) => Buffer.concat(bufs.flat());

test("frames round-trip: deflated chunks, plain runs, split at every kind of boundary", () => {
  const a = pages();
  const b = Buffer.from("page request");
  const enc = new FrameEncoder();
  // Deflated, then plain (opens a run), then a chunk meant for deflate fills the run first.
  const bufs = [enc.encode(a, true), enc.encode(b, false), enc.encode(a, true)];
  assert.is(bufs[2].length, 1, "an open plain run takes the next chunk as is");
  const bytes = wire(bufs);
  assert.ok(bytes.length < a.length * 1.6, `${bytes.length} bytes on the wire`);
  const want = Buffer.concat([a, b, a]);
  for (const cut of [0, 1, 4, 5, 100, bytes.length - 13, bytes.length - 1, bytes.length]) {
    const d = new FrameDecoder();
    const first = d.push(bytes.subarray(0, cut));
    const second = d.push(bytes.subarray(cut));
    assert.equal(Buffer.concat([...first, ...second]), want, `cut at ${cut}`);
    assert.ok(d.canEnd, "the stream may end inside an open plain run");
  }
  // Byte by byte: plain bytes come out as they arrive, without waiting for the run to fill.
  const d = new FrameDecoder();
  const plain = wire([new FrameEncoder().encode(b, false)]);
  assert.is(plain.length, 5 + b.length);
  const got = [...plain].flatMap((x) => d.push(Buffer.from([x])));
  assert.is(got.length, b.length);
  assert.equal(Buffer.concat(got), b);
  // Mid-header or mid-deflated-frame, it may not.
  const z = wire([new FrameEncoder().encode(a, true)]);
  const half = new FrameDecoder();
  half.push(z.subarray(0, 3));
  assert.not.ok(half.canEnd);
  half.push(z.subarray(3, 20));
  assert.not.ok(half.canEnd);
});

test("plain runs span chunks and reopen after PLAIN_RUN bytes", () => {
  const enc = new FrameEncoder();
  const chunk = Buffer.alloc(300 << 10, 1);
  const bufs = [0, 1, 2, 3, 4].map(() => enc.encode(chunk, false));
  const headers = bufs.flat().filter((x) => x.length === 5).length;
  assert.is(headers, Math.ceil((5 * chunk.length) / PLAIN_RUN));
  assert.equal(Buffer.concat(new FrameDecoder().push(wire(bufs))), Buffer.concat(bufs.map(() => chunk)));
});

test("a chunk deflate cannot shrink travels plain", () => {
  const noise = randomBytes(4096);
  const [head, payload] = new FrameEncoder().encode(noise, true);
  assert.is(head[0], 0, "kind plain");
  assert.is(head.readUInt32BE(1), noise.length, "a frame of exactly the chunk, no run left open");
  assert.equal(new FrameDecoder().push(Buffer.concat([head, payload]))[0], noise);
});

test("bad frames are rejected clearly", () => {
  const kind = Buffer.from([7, 0, 0, 0, 1, 0]);
  assert.throws(
    () => new FrameDecoder().push(kind),
    (e: unknown) => e instanceof ChannelProtocolError,
  );
  const big = Buffer.alloc(5);
  big.writeUInt32BE(MAX_FRAME + 1, 1);
  assert.throws(() => new FrameDecoder().push(big), /too large/);
  const corrupt = Buffer.from([1, 0, 0, 0, 3, 0xff, 0xff, 0xff]);
  assert.throws(() => new FrameDecoder().push(corrupt), /corrupt deflated/);
});

test("auto deflates a young connection's first bytes, then only while the link pushes back and drains slowly; on and off are fixed", () => {
  const run = (bytesPerMs: number, pushBack: boolean) => {
    const m = new DrainMeter();
    for (let t = 0; t <= 1000; t += 10) {
      if (pushBack) m.pushedBack();
      m.sample(t * bytesPerMs + (1 << 20), 1 << 20, t);
    }
    return m;
  };
  // Loopback: the wire pushes back now and then, but drains 2 GB/s.
  const fast = run(2e6, true);
  assert.ok(fast.rate !== undefined && fast.rate > SLOW_LINK_BYTES_PER_SEC, `rate ${fast.rate}`);
  assert.not.ok(shouldDeflate("auto", fast));
  // A saturated 450 Mbit/s WAN: ~56 MB/s with push-back.
  const slow = run(56e3, true);
  assert.ok(slow.rate !== undefined && Math.abs(slow.rate - 56e6) < 1e6, `rate ${slow.rate}`);
  assert.ok(shouldDeflate("auto", slow));
  // The same slow link never pushing back: QEMU, not the link, sets the pace.
  const idle = run(56e3, false);
  assert.is(idle.rate, undefined);
  assert.not.ok(shouldDeflate("auto", idle));
  // A window without push-back clears the verdict.
  slow.sample(1000 * 56e3 + (1 << 20) + 56e5, 1 << 20, 1100);
  assert.not.ok(shouldDeflate("auto", slow));
  assert.ok(shouldDeflate("on", new DrainMeter()));
  assert.not.ok(shouldDeflate("off", fast));
  // A young connection (TCP slow start paces it, not the link): its first YOUNG_BYTES deflate.
  const young = new DrainMeter();
  assert.ok(shouldDeflate("auto", young));
  young.sample(YOUNG_BYTES - 1, 0, 0);
  assert.ok(shouldDeflate("auto", young));
  young.sample(YOUNG_BYTES, 0, 1);
  assert.not.ok(shouldDeflate("auto", young));
  assert.not.ok(shouldDeflate("off", new DrainMeter()));
});

test.run();
