// Pure planning of upstream requests: which blocks to fetch, merged into runs of adjacent
// blocks no longer than the largest request (each upstream request costs ~1 ms on its own,
// so few large requests beat many small ones).

export interface Run {
  first: number;
  count: number;
}

/** Merges sorted, distinct block numbers into runs of at most `maxBlocks` adjacent blocks. */
export function mergeRuns(blocks: readonly number[], maxBlocks: number): Run[] {
  if (maxBlocks < 1) throw new Error("maxBlocks must be >= 1");
  const runs: Run[] = [];
  let cur: Run | undefined;
  for (const b of blocks) {
    if (cur && b === cur.first + cur.count && cur.count < maxBlocks) cur.count++;
    else {
      cur = { first: b, count: 1 };
      runs.push(cur);
    }
  }
  return runs;
}

/**
 * The run starting at `start` (which must be wanted): extends while the next block is
 * wanted, up to `maxBlocks` or `limit` (exclusive end).
 */
export function runFrom(
  start: number,
  limit: number,
  maxBlocks: number,
  wanted: (b: number) => boolean,
): Run {
  let count = 1;
  while (count < maxBlocks && start + count < limit && wanted(start + count)) count++;
  return { first: start, count };
}

/** Byte range of a run, clipped to the disk size (the last block may be short). */
export function runBytes(run: Run, blockSize: number, diskSize: number): { offset: number; length: number } {
  const offset = run.first * blockSize;
  return { offset, length: Math.min(run.count * blockSize, diskSize - offset) };
}

/** Blocks touched by [offset, offset+length). */
export function blockSpan(
  offset: number,
  length: number,
  blockSize: number,
): { first: number; last: number } {
  return {
    first: Math.floor(offset / blockSize),
    last: Math.floor((offset + Math.max(length, 1) - 1) / blockSize),
  };
}
