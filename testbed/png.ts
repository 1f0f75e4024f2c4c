// Reading a PNG's pixels with node:zlib only (the screenshots headless Chromium takes): chunks,
// IHDR, the IDAT stream inflated, each scanline unfiltered. 8-bit grey, grey+alpha, RGB and RGBA,
// not interlaced: what Chromium writes. Pure.
import { inflateSync } from "node:zlib";

export interface Image {
  width: number;
  height: number;
  /** Samples per pixel: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA. */
  channels: number;
  /** Unfiltered samples, row after row. */
  data: Buffer;
}

const SIGNATURE = Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]);
const CHANNELS: Record<number, number> = { 0: 1, 4: 2, 2: 3, 6: 4 };

export function decodePng(png: Buffer): Image {
  if (png.length < 8 || !png.subarray(0, 8).equals(SIGNATURE)) throw new Error("not a PNG (bad signature)");
  let header: { width: number; height: number; depth: number; colour: number; interlace: number } | undefined;
  const idat: Buffer[] = [];
  let ended = false;
  for (let at = 8; at + 8 <= png.length; ) {
    const len = png.readUInt32BE(at);
    const type = png.toString("latin1", at + 4, at + 8);
    const body = png.subarray(at + 8, at + 8 + len);
    if (body.length !== len) throw new Error(`PNG chunk ${type} truncated`);
    if (type === "IHDR")
      header = {
        width: body.readUInt32BE(0),
        height: body.readUInt32BE(4),
        depth: body[8],
        colour: body[9],
        interlace: body[12],
      };
    else if (type === "IDAT") idat.push(body);
    else if (type === "IEND") {
      ended = true;
      break;
    }
    at += 12 + len; // length, type, body, CRC
  }
  if (!header) throw new Error("PNG without IHDR");
  if (!ended || !idat.length) throw new Error("PNG truncated: no IEND or no image data");
  const channels = CHANNELS[header.colour];
  if (header.depth !== 8 || channels === undefined || header.interlace !== 0)
    throw new Error(
      `PNG kind not supported: depth ${header.depth}, colour type ${header.colour}, interlace ${header.interlace}`,
    );
  const raw = inflateSync(Buffer.concat(idat));
  const { width, height } = header;
  const stride = width * channels;
  if (raw.length < height * (stride + 1)) throw new Error("PNG image data shorter than its size");
  const data = Buffer.alloc(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    unfilter(filter, line, data, y * stride, stride, channels);
  }
  return { width, height, channels, data };
}

/** Undoes one scanline's filter into `out` at `off` (the row above is already there). */
function unfilter(filter: number, line: Buffer, out: Buffer, off: number, stride: number, bpp: number): void {
  for (let i = 0; i < stride; i++) {
    const a = i >= bpp ? out[off + i - bpp] : 0;
    const b = off >= stride ? out[off - stride + i] : 0;
    const c = i >= bpp && off >= stride ? out[off - stride + i - bpp] : 0;
    let p: number;
    switch (filter) {
      case 0:
        p = 0;
        break;
      case 1:
        p = a;
        break;
      case 2:
        p = b;
        break;
      case 3:
        p = (a + b) >> 1;
        break;
      case 4:
        p = paeth(a, b, c);
        break;
      default:
        throw new Error(`PNG filter type ${filter} unknown`);
    }
    out[off + i] = (line[i] + p) & 0xff;
  }
}

function paeth(a: number, b: number, c: number): number {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/** How many pixels differ from the image's most common colour (its background), and how many colours it has. */
export function inkStats(img: Image): { ink: number; colours: number } {
  const counts = new Map<string, number>();
  for (let i = 0; i < img.data.length; i += img.channels) {
    const key = img.data.subarray(i, i + img.channels).toString("hex");
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  const background = Math.max(...counts.values());
  return { ink: img.width * img.height - background, colours: counts.size };
}
