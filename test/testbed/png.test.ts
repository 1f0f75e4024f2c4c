// The PNG reader behind the report's rendering test: images encoded here with every scanline
// filter and colour type it reads come back pixel for pixel; what it cannot read is refused.
import { deflateSync } from "node:zlib";
import * as assert from "uvu/assert";
import { decodePng, inkStats } from "../../testbed/png.js";
import { test } from "../helpers/uvu.js";

function chunk(type: string, body: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length);
  return Buffer.concat([len, Buffer.from(type, "latin1"), body, Buffer.alloc(4)]); // CRC unread
}

/** A PNG of `pixels` (rows of samples), scanline y filtered with filter y % 5 (the encoder's side of each). */
function encode(width: number, height: number, colour: number, channels: number, pixels: Buffer): Buffer {
  const stride = width * channels;
  const rows: Buffer[] = [];
  for (let y = 0; y < height; y++) {
    const f = y % 5;
    const row = Buffer.alloc(stride + 1);
    row[0] = f;
    for (let i = 0; i < stride; i++) {
      const x = pixels[y * stride + i];
      const a = i >= channels ? pixels[y * stride + i - channels] : 0;
      const b = y > 0 ? pixels[(y - 1) * stride + i] : 0;
      const c = y > 0 && i >= channels ? pixels[(y - 1) * stride + i - channels] : 0;
      const p = a + b - c;
      const paeth =
        Math.abs(p - a) <= Math.abs(p - b) && Math.abs(p - a) <= Math.abs(p - c)
          ? a
          : Math.abs(p - b) <= Math.abs(p - c)
            ? b
            : c;
      const pred = [0, a, b, (a + b) >> 1, paeth][f];
      row[i + 1] = (x - pred) & 0xff;
    }
    rows.push(row);
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = colour;
  const data = deflateSync(Buffer.concat(rows));
  return Buffer.concat([
    Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk("IHDR", ihdr),
    // Split IDAT: a decoder must join the stream across chunks.
    chunk("IDAT", data.subarray(0, data.length >> 1)),
    chunk("tEXt", Buffer.from("Comment\0ignored")),
    chunk("IDAT", data.subarray(data.length >> 1)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

function noise(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    b[i] = s >> 16;
  }
  return b;
}

test("every filter type and colour type decodes back to the pixels encoded", () => {
  for (const [colour, channels] of [
    [0, 1],
    [4, 2],
    [2, 3],
    [6, 4],
  ]) {
    const [w, h] = [13, 11];
    const pixels = noise(w * h * channels, colour + 7);
    const img = decodePng(encode(w, h, colour, channels, pixels));
    assert.equal([img.width, img.height, img.channels], [w, h, channels]);
    assert.ok(img.data.equals(pixels), `colour type ${colour}`);
  }
});

test("inkStats: a blank image has no ink; one dot is one pixel of ink and a second colour", () => {
  const white = Buffer.alloc(8 * 6 * 3, 255);
  assert.equal(inkStats(decodePng(encode(8, 6, 2, 3, white))), { ink: 0, colours: 1 });
  const dot = Buffer.from(white);
  dot.fill(0, 3 * 10, 3 * 11);
  assert.equal(inkStats(decodePng(encode(8, 6, 2, 3, dot))), { ink: 1, colours: 2 });
});

test("what it cannot read is refused with the reason", () => {
  assert.throws(() => decodePng(Buffer.from("GIF89a........")), /not a PNG/);
  const png = encode(2, 2, 2, 3, Buffer.alloc(12));
  const sixteen = Buffer.from(png);
  sixteen[8 + 8 + 8] = 16; // IHDR bit depth
  assert.throws(() => decodePng(sixteen), /depth 16/);
  assert.throws(() => decodePng(png.subarray(0, 40)), /truncated/);
  assert.throws(() => decodePng(png.subarray(0, png.length - 12)), /truncated/);
});

test.run();
