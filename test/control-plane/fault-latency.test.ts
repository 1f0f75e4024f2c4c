// The destination's post-copy fault latency as the migration record keeps it: from the
// page-server's WatchMigration into the record (snake_case JSON) and out to the API unchanged.
import * as assert from "uvu/assert";
import { faultLatencyRecord, faultLatencyToProto } from "../../services/control-plane/fault-latency.js";
import { test } from "../helpers/uvu.js";

test("fault latency: WatchMigration → record → API, unset stays unset", () => {
  const pb = { timed: 34, requested: 77, inFlight: 43, p50Ms: 28.4, p99Ms: 258.8, maxMs: 258.8, stopped: "" };
  const rec = faultLatencyRecord(pb);
  assert.equal(rec, { timed: 34, requested: 77, in_flight: 43, p50_ms: 28.4, p99_ms: 258.8, max_ms: 258.8 });
  assert.equal(faultLatencyToProto(JSON.parse(JSON.stringify(rec))), pb);
  const stopped = faultLatencyRecord({ ...pb, stopped: "urgent lane: RAM record with flags 0x80" });
  assert.is(stopped?.stopped, "urgent lane: RAM record with flags 0x80");
  assert.is(faultLatencyToProto(stopped)?.stopped, "urgent lane: RAM record with flags 0x80");
  assert.is(faultLatencyRecord(undefined), undefined);
  assert.is(faultLatencyToProto(undefined), undefined);
});

test.run();
