// The migration state table: every edge, the final states, refused events.
import * as assert from "uvu/assert";
import {
  FINAL_STATES,
  isFinal,
  type MigrationEvent,
  type MigrationState,
  next,
  pastSwitch,
  TRANSITIONS,
  TransitionError,
} from "../../services/control-plane/states.js";
import { test } from "../helpers/uvu.js";

const EVENTS: MigrationEvent[] = [
  "prepare",
  "start",
  "switch",
  "complete",
  "relocate",
  "finish",
  "fail",
  "cancel",
];
const STATES = Object.keys(TRANSITIONS) as MigrationState[];

test("the happy path: pending → preparing → migrating → switched → completing → relocating → done", () => {
  let s: MigrationState = "pending";
  const seen: MigrationState[] = [s];
  for (const e of ["prepare", "start", "switch", "complete", "relocate", "finish"] as MigrationEvent[]) {
    s = next(s, e);
    seen.push(s);
  }
  assert.equal(seen, ["pending", "preparing", "migrating", "switched", "completing", "relocating", "done"]);
});

test("a pre-copy migration completes without a post-copy switch", () => {
  assert.is(next("migrating", "complete"), "completing");
});

test("fail and cancel before the switch; after it only fail (a broken step is reported, never a VM held for ever)", () => {
  for (const s of ["pending", "preparing", "migrating"] as MigrationState[]) {
    assert.is(next(s, "fail"), "failed");
    assert.is(next(s, "cancel"), "cancelled");
    assert.not.ok(pastSwitch(s));
  }
  for (const s of ["switched", "completing", "relocating"] as MigrationState[]) {
    assert.is(next(s, "fail"), "failed");
    assert.throws(() => next(s, "cancel"), /does not allow/);
    assert.ok(pastSwitch(s));
  }
});

test("final states have no edges; every other state reaches one", () => {
  for (const s of STATES) {
    if (FINAL_STATES.includes(s)) {
      assert.ok(isFinal(s));
      for (const e of EVENTS) assert.throws(() => next(s, e), /does not allow/);
    } else {
      assert.not.ok(isFinal(s));
      assert.ok(Object.keys(TRANSITIONS[s]).length > 0, s);
    }
  }
  // Reachability from pending covers every state.
  const reached = new Set<MigrationState>(["pending"]);
  for (let changed = true; changed; ) {
    changed = false;
    for (const s of [...reached])
      for (const to of Object.values(TRANSITIONS[s]))
        if (to && !reached.has(to)) {
          reached.add(to);
          changed = true;
        }
  }
  assert.equal([...reached].sort(), [...STATES].sort());
});

test("skipping a step is refused with the state and event named", () => {
  try {
    next("pending", "switch");
    assert.unreachable();
  } catch (err) {
    assert.instance(err, TransitionError);
    assert.match((err as Error).message, "migration state pending does not allow switch");
  }
  assert.throws(() => next("preparing", "finish"), /does not allow/);
});

test("pastSwitch: from switched on the VM may run at the destination", () => {
  assert.equal(STATES.filter(pastSwitch), ["switched", "completing", "relocating", "done"]);
});

test.run();
