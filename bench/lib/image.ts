// A benchmark disk image with realistic content: random data in most 1 MiB extents, zeros
// (holes) in the rest, deterministic for a given size; synced to disk, then read once into
// the page cache.
import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, ftruncateSync, openSync, readSync, writeSync } from "node:fs";

export function makeImage(path: string, sizeBytes: number, dataFraction = 0.6): void {
  const extent = 1 << 20;
  const fd = openSync(path, "w");
  try {
    ftruncateSync(fd, sizeBytes);
    const chunk = randomBytes(extent);
    let seed = 12345;
    for (let off = 0; off < sizeBytes; off += extent) {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      if (seed / 0x7fffffff >= dataFraction) continue;
      // Vary the bytes per extent so no two extents are identical.
      chunk.writeUInt32LE(off / extent, 0);
      writeSync(fd, chunk, 0, Math.min(extent, sizeBytes - off), off);
    }
    // On disk before anything is timed, like a real VM's disk: otherwise the kernel writes the
    // image back (and ext4 allocates its extents) in the middle of whichever runs come first.
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  warmPageCache(path);
}

export function warmPageCache(path: string): void {
  const fd = openSync(path, "r");
  const buf = Buffer.allocUnsafe(4 << 20);
  try {
    while (readSync(fd, buf, 0, buf.length, null) > 0);
  } finally {
    closeSync(fd);
  }
}
