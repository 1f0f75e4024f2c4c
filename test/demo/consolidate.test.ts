// `vmhop demo --consolidate`, run as a user runs it (real QEMU guests on three namespace hosts,
// the real placement service and control-plane, the testbed power driver): its --json object
// says the load's fall emptied and switched off a host, its rise woke one, migrations were done
// and every guest verified its memory and disk across its moves; nothing is left behind.
import * as assert from "uvu/assert";
import type { ConsolidateResult } from "../../testbed/sites/consolidate.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { within } from "../helpers/wait.js";
import { demo, leftovers } from "./demo-run.js";

const t = gate(test, ["root", "ip", "qemu-system-x86_64", "nbdkit"], "vmhop demo --consolidate");

t("vmhop demo --consolidate --json: a host switched off, one woken, every guest verified", async () => {
  const r = demo(["--consolidate", "--json"]);
  const code = await within(r.exited, 1_500_000, "the consolidation demo to end");
  const last = r.stdout().trim().split("\n").at(-1) ?? "";
  const why = `exit ${code}\nstdout: ${r.stdout().slice(-4000)}\nstderr: ${r.stderr().slice(-8000)}`;
  assert.is(code, 0, why);
  const j = JSON.parse(last) as ConsolidateResult;
  assert.ok(j.ok, why);
  assert.ok(j.hosts_switched_off.length > 0, `no host switched off: ${last}`);
  assert.ok(j.hosts_woken.length > 0, `no host woken: ${last}`);
  // A woken host was one switched off before.
  assert.ok(
    j.hosts_woken.every((h) => j.hosts_switched_off.includes(h)),
    last,
  );
  assert.ok(j.migrations > 0, last);
  assert.is(j.guests.length, 3);
  for (const g of j.guests) {
    assert.ok(g.verified, `${g.vm_id}: ${JSON.stringify(g)}`);
    assert.is(g.counter_breaks, 0);
    assert.ok(g.max_stall_ms > 0);
  }
  // The plans carried the moves (each done) and the power actions the outcome names.
  const done = j.plans.flatMap((p) => p.moves.filter((m) => m.state === "done"));
  assert.is(done.length, j.migrations);
  assert.ok(j.plans.some((p) => p.hosts_to_sleep.length > 0));
  assert.ok(j.plans.some((p) => p.hosts_to_wake.length > 0));
  // Power per phase by the model: consolidated at low load, fewer hosts on draw less than the
  // same load would with every VM where it started and every host on.
  const cons = j.phases.find((p) => p.phase === "load low, consolidated");
  assert.ok(cons, JSON.stringify(j.phases));
  assert.ok(cons.mean_watts < cons.mean_watts_unconsolidated, JSON.stringify(cons));
  assert.ok(cons.hosts_on.length < 3, JSON.stringify(cons));
  // Progress went to stderr, stdout holds the object only.
  assert.is(r.stdout().trim().split("\n").length, 1);
  assert.match(r.stderr(), /placement service ready/);
  assert.equal(leftovers(r.child.pid!), []);
});

t.run();
