// The migrate command's progress line: state, memory, the disk's blocks and how they came.
import * as assert from "uvu/assert";
import { Migration } from "../../gen/vmhop/v1/control.js";
import {
  diskEtaSeconds,
  diskSample,
  formatDuration,
  formatProgress,
} from "../../services/control-plane/progress.js";
import { test } from "../helpers/uvu.js";

const base = Migration.fromPartial({
  migrationId: "m-7",
  vmId: "vm1",
  sourceHostId: "a",
  destinationHostId: "b",
  state: "relocating",
  createdUnixMs: 1_000,
  enteredUnixMs: { pending: 1_000, relocating: 3_000 },
});

test("memory sent, disk blocks local with their sources, elapsed time", () => {
  const m = {
    ...base,
    bytesSent: 64 << 20,
    disk: {
      destinationExport: "disk0",
      sourceUrl: "nbd://a/disk0",
      blocksTotal: 512,
      blocksLocal: 128,
      bytesFetchedOnDemand: 1 << 20,
      bytesFetchedBackground: 7 << 20,
      promoted: false,
    },
  };
  assert.is(
    formatProgress(m, 5_500),
    "m-7 vm1 a → b: relocating; memory 64.0 MiB sent; disk 128/512 blocks local (25.0%), 1.0 MiB on demand, 7.0 MiB background; 4.5 s",
  );
});

test("memory still at the source while it moves, not once it is complete", () => {
  const memory = {
    bytesRemaining: 24 << 20,
    pagesRequestedOnFault: 3,
    pagesSentAhead: 0,
    bytesBeforeResume: 0,
    recoveries: 0,
  };
  const switched = { ...base, state: "switched", bytesSent: 40 << 20, memory };
  assert.match(formatProgress(switched, 2_000), "switched; memory 40.0 MiB sent, 24.0 MiB remaining;");
  assert.match(
    formatProgress({ ...switched, state: "relocating" }, 2_000),
    "relocating; memory 40.0 MiB sent;",
  );
  // A stream that broke and was resumed on a new channel says so.
  assert.match(
    formatProgress({ ...switched, memory: { ...memory, recoveries: 1 } }, 2_000),
    "switched; memory 40.0 MiB sent, 24.0 MiB remaining, 1 post-copy recovery;",
  );
});

test("a failure says why; nothing about a disk that is not moving", () => {
  const line = formatProgress(
    { ...base, state: "failed", error: "block-server b: CreateExport: exists" },
    2_000,
  );
  assert.is(line, "m-7 vm1 a → b: failed; 1.0 s; error: block-server b: CreateExport: exists");
});

test("what a host that went down took with it is shown, never hidden", () => {
  const lost = "the source a went down after the switch-over with 12 of 512 disk blocks still there";
  assert.match(formatProgress({ ...base, lost }, 2_000), `relocating; 1.0 s; lost: ${lost}`);
  assert.not.match(formatProgress(base, 2_000), "lost");
});

test("the address part: moving, skipped with its reason, failed with its reason", () => {
  const net = {
    state: "switched",
    reason: "",
    generation: 2,
    handoverMode: 0,
    fromSite: "sa",
    toSite: "sb",
    port: "vmtap0",
    enteredUnixMs: {},
  };
  assert.is(
    formatProgress({ ...base, network: net }, 2_000),
    "m-7 vm1 a → b: relocating; address switched sa → sb; 1.0 s",
  );
  assert.is(
    formatProgress({ ...base, network: { ...net, state: "skipped", reason: "same site" } }, 2_000),
    "m-7 vm1 a → b: relocating; address not moved (same site); 1.0 s",
  );
  assert.is(
    formatProgress({ ...base, network: { ...net, state: "failed", reason: "SwitchOver: gone" } }, 2_000),
    "m-7 vm1 a → b: relocating; address failed sa → sb (SwitchOver: gone); 1.0 s",
  );
});

const disk = (blocksLocal: number) => ({
  destinationExport: "disk0",
  sourceUrl: "nbd://a/disk0",
  blocksTotal: 1000,
  blocksLocal,
  bytesFetchedOnDemand: 0,
  bytesFetchedBackground: blocksLocal << 16,
  promoted: false,
});

test("ETA from the disk copy's average rate since the first sample, on the records' own clock", () => {
  const first = { ...base, state: "switched", updatedUnixMs: 10_000, disk: disk(100) };
  const since = diskSample(first);
  assert.equal(since, { atMs: 10_000, blocksLocal: 100 });
  // No rate from one sample.
  assert.is(diskEtaSeconds(first, since), undefined);
  // 300 blocks in 3 s: 600 left take 6 s.
  const later = { ...base, updatedUnixMs: 13_000, disk: disk(400) };
  assert.is(diskEtaSeconds(later, since), 6);
  assert.match(
    formatProgress(later, 13_000, since),
    /disk 400\/1000 blocks local \(40\.0%\), 0\.0 MiB on demand, 25\.0 MiB background, ETA 6 s;/,
  );
  // Done, or no disk moving: no ETA.
  assert.is(diskEtaSeconds({ ...later, disk: disk(1000) }, since), undefined);
  assert.is(diskSample(base), undefined);
  assert.not.match(formatProgress(base, 2_000, since), /ETA/);
});

test("durations read as seconds, minutes or hours", () => {
  assert.equal(
    [formatDuration(0.4), formatDuration(42), formatDuration(185), formatDuration(3725)],
    ["0 s", "42 s", "3 min 05 s", "1 h 02 min"],
  );
});

test.run();
