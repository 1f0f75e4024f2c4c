// The address part of a migration: its table (paths, refused steps, finals) and when a migration
// moves the VM's address at all (and why not).
import * as assert from "uvu/assert";
import {
  NETWORK_TRANSITIONS,
  type NetworkEvent,
  type NetworkPlanInput,
  type NetworkState,
  NetworkTransitionError,
  needsRollback,
  nextNetwork,
  planNetwork,
} from "../../services/control-plane/network-states.js";
import { test } from "../helpers/uvu.js";

const walk = (from: NetworkState, events: NetworkEvent[]) =>
  events.reduce<NetworkState[]>((seen, e) => seen.concat(nextNetwork(seen[seen.length - 1], e)), [from]);

test("the happy path: pending → preparing → prepared → switching → switched → settled", () => {
  assert.equal(walk("pending", ["prepare", "prepared", "switch", "switched", "settled"]), [
    "pending",
    "preparing",
    "prepared",
    "switching",
    "switched",
    "settled",
  ]);
});

test("a rollback only before the switch-over; a failure from any state not final", () => {
  for (const s of ["pending", "preparing", "prepared"] as NetworkState[])
    assert.is(nextNetwork(s, "rollback"), "rolled_back");
  for (const s of ["switching", "switched"] as NetworkState[])
    assert.throws(() => nextNetwork(s, "rollback"), /does not allow rollback/);
  for (const s of ["pending", "preparing", "prepared", "switching", "switched"] as NetworkState[])
    assert.is(nextNetwork(s, "fail"), "failed");
});

test("final states allow nothing; skipping a step is refused with both names", () => {
  for (const s of ["skipped", "settled", "rolled_back", "failed"] as NetworkState[])
    assert.equal(NETWORK_TRANSITIONS[s], {});
  const err = (() => {
    try {
      nextNetwork("preparing", "switch");
    } catch (e) {
      return e as NetworkTransitionError;
    }
  })();
  assert.instance(err, NetworkTransitionError);
  assert.is(err?.message, "network state preparing does not allow switch");
});

test("needsRollback: only what may hold state at the destination", () => {
  const states = Object.keys(NETWORK_TRANSITIONS) as NetworkState[];
  const base = planNetwork(ok, 1);
  assert.equal(
    states.filter((state) => needsRollback({ ...base, state })),
    ["preparing", "prepared"],
  );
  assert.is(needsRollback(undefined), false);
});

const ok: NetworkPlanInput = {
  netreach: true,
  addresses: { home_ipv6: ["fd00::10"], home_ipv4: [] },
  tap: "vmtap0",
  fromSite: "a",
  toSite: "b",
  mode: 4,
  generation: 3,
};

test("a migration across sites of a VM with addresses moves its address", () => {
  assert.equal(planNetwork(ok, 1_000), {
    state: "pending",
    reason: "",
    generation: 3,
    mode: 4,
    from_site: "a",
    to_site: "b",
    port: "vmtap0",
    entered_unix_ms: { pending: 1_000 },
  });
});

test("otherwise it is skipped, and the record says why", () => {
  const why = (p: Partial<NetworkPlanInput>) => {
    const n = planNetwork({ ...ok, ...p }, 1);
    assert.is(n.state, "skipped");
    return n.reason;
  };
  assert.is(why({ netreach: false }), "netreach not configured");
  assert.is(why({ addresses: undefined }), "VM has no home addresses");
  assert.is(why({ addresses: { home_ipv6: [], home_ipv4: [] } }), "VM has no home addresses");
  assert.is(why({ toSite: "a" }), "same site");
  assert.is(why({ fromSite: "" }), "a host has no site");
  assert.is(why({ tap: "" }), "VM has no tap (nic_tap)");
});

test.run();
