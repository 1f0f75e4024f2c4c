// A migration's bounded progress history: what appendSample keeps, and that the records'
// progress writes (recordProgress, a transition carrying progress) append to it on a real store.
import { setTimeout as sleep } from "node:timers/promises";
import * as assert from "uvu/assert";
import { MemoryStore } from "../../services/common/store/index.js";
import {
  appendSample,
  MAX_PROGRESS_SAMPLES,
  type ProgressSampleRecord,
} from "../../services/control-plane/progress-history.js";
import {
  KEYS,
  type MigrationRecord,
  readJson,
  recordProgress,
  transition,
} from "../../services/control-plane/records.js";
import { test } from "../helpers/uvu.js";

const sample = (i: number, local = i): ProgressSampleRecord => ({
  at_unix_ms: 1000 + i,
  bytes_sent: i * 10,
  bytes_remaining: 100_000 - i,
  blocks_local: local,
  blocks_total: 100_000,
});

test("a long migration keeps at most the limit, spread evenly, the first and the latest kept", () => {
  let h: ProgressSampleRecord[] = [];
  for (let i = 0; i < 10_000; i++) {
    h = appendSample(h, sample(i));
    assert.ok(h.length <= MAX_PROGRESS_SAMPLES, `${h.length} samples after ${i + 1}`);
  }
  assert.is(h[0].at_unix_ms, 1000);
  assert.is(h.at(-1)!.at_unix_ms, 1000 + 9999);
  assert.ok(h.length >= MAX_PROGRESS_SAMPLES / 2, `${h.length}`);
  // Evenly spread: no stretch between kept samples is more than a few times the typical one.
  const steps = h.slice(1).map((s, i) => s.at_unix_ms - h[i].at_unix_ms);
  const median = [...steps].sort((a, b) => a - b)[steps.length >> 1];
  assert.ok(Math.max(...steps) <= 4 * median, JSON.stringify({ max: Math.max(...steps), median }));
  // Time order is kept.
  assert.ok(steps.every((d) => d > 0));
});

test("a flat stretch keeps its start and its end only", () => {
  let h: ProgressSampleRecord[] = [];
  h = appendSample(h, sample(0));
  for (let i = 1; i <= 50; i++) h = appendSample(h, { ...sample(1), at_unix_ms: 1000 + i });
  h = appendSample(h, { ...sample(2), at_unix_ms: 1051 });
  assert.equal(
    h.map((s) => s.at_unix_ms),
    [1000, 1001, 1050, 1051],
  );
});

test("progress writes append samples to the record; a transition without progress does not", async () => {
  const store = new MemoryStore();
  const rec: MigrationRecord = {
    migration_id: "m-1",
    request_id: "",
    vm_id: "vm1",
    source_host_id: "h1",
    destination_host_id: "h2",
    mode: 1,
    state: "pending",
    fencing_token: 1,
    error: "",
    bytes_sent: 0,
    downtime_ms: 0,
    created_unix_ms: Date.now(),
    updated_unix_ms: Date.now(),
  };
  await store.set(KEYS.migration("m-1"), JSON.stringify(rec));
  await transition(store, "m-1", "prepare");
  await transition(store, "m-1", "start");
  // Writes some ms apart, as a migration's are (samples within the history's spacing would merge).
  for (let i = 1; i <= 3; i++) {
    await sleep(20);
    await recordProgress(store, "m-1", {
      bytes_sent: i * 100,
      memory: { bytes_remaining: 1000 - i * 100, pages_requested_on_fault: 0 },
    });
  }
  await sleep(20);
  await transition(store, "m-1", "switch", { bytes_sent: 400 });
  const got = (await readJson<MigrationRecord>(store, KEYS.migration("m-1")))!.value;
  assert.equal(
    got.progress!.map((s) => [s.bytes_sent, s.bytes_remaining]),
    [
      [100, 900],
      [200, 800],
      [300, 700],
      [400, 700],
    ],
  );
  assert.ok(got.progress!.every((s) => s.at_unix_ms >= rec.created_unix_ms));
  await store.close();
});

test.run();
