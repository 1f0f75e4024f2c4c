// The uncompressed ELF kernel inside a bzImage (vmlinuz). QEMU boots an ELF vmlinux through
// its PVH entry point, skipping the in-guest decompression that is slow under TCG.
import { execFile } from "node:child_process";
import { gunzipSync } from "node:zlib";

export type PayloadFormat = "gzip" | "xz" | "zstd" | "lzma" | "elf";

export interface KernelPayload {
  offset: number;
  length: number;
  format: PayloadFormat;
}

const magics: [PayloadFormat, number[]][] = [
  ["gzip", [0x1f, 0x8b]],
  ["xz", [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ["zstd", [0x28, 0xb5, 0x2f, 0xfd]],
  ["lzma", [0x5d, 0x00, 0x00]],
  ["elf", [0x7f, 0x45, 0x4c, 0x46]],
];

export function isElf(buf: Buffer): boolean {
  return buf.length >= 4 && buf.readUInt32BE(0) === 0x7f454c46;
}

/** Finds the compressed payload through the boot protocol header (x86 boot protocol ≥ 2.08). */
export function locateKernelPayload(image: Buffer): KernelPayload {
  if (image.length < 0x260 || image.readUInt32LE(0x202) !== 0x53726448 /* "HdrS" */)
    throw new Error("not a bzImage: no HdrS boot header");
  const version = image.readUInt16LE(0x206);
  if (version < 0x208) throw new Error(`boot protocol ${version.toString(16)} too old (no payload fields)`);
  const setupSects = image[0x1f1] || 4;
  const payloadOffset = image.readUInt32LE(0x248);
  const length = image.readUInt32LE(0x24c);
  const offset = (setupSects + 1) * 512 + payloadOffset;
  if (offset + length > image.length) throw new Error("bzImage payload runs past the end of the file");
  const head = image.subarray(offset, offset + 8);
  const found = magics.find(([, m]) => m.every((b, i) => head[i] === b));
  if (!found) throw new Error(`unknown kernel payload compression (magic ${head.toString("hex")})`);
  return { offset, length, format: found[0] };
}

function viaTool(cmd: string, args: string[], input: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { encoding: "buffer", maxBuffer: 1 << 30 }, (err, stdout, stderr) => {
      if (err)
        reject(new Error(`${cmd} ${args.join(" ")} failed: ${stderr.toString().trim() || err.message}`));
      else resolve(stdout);
    });
    child.stdin?.end(input);
  });
}

/** Decompresses a bzImage's payload to the ELF vmlinux. xz and zstd use the host tools. */
export async function extractVmlinux(image: Buffer): Promise<Buffer> {
  const p = locateKernelPayload(image);
  const data = image.subarray(p.offset, p.offset + p.length);
  let out: Buffer;
  switch (p.format) {
    case "elf":
      out = Buffer.from(data);
      break;
    case "gzip":
      out = gunzipSync(data);
      break;
    case "xz": // the payload ends with a 4-byte size trailer: stop after the first stream
      out = await viaTool("xz", ["-dc", "--single-stream"], data);
      break;
    case "lzma":
      out = await viaTool("xz", ["-dc", "--format=lzma"], data);
      break;
    case "zstd":
      out = await viaTool("zstd", ["-dc"], data);
      break;
  }
  if (!isElf(out)) throw new Error(`decompressed ${p.format} kernel payload is not an ELF file`);
  return out;
}
