// `vmhop demo`, the main job, run as a user runs it: a process whose --json object says what the
// whole-VM migration did, every verification true; afterwards nothing it started is left (no
// namespace, no QEMU); its --report page renders in headless Chromium with every phase on it.
// And a demo interrupted (SIGINT) mid-run stops and removes everything too.
import { existsSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { assertRenders } from "../helpers/rendered.js";
import { test } from "../helpers/uvu.js";
import { within } from "../helpers/wait.js";
import { demo, leftovers } from "./demo-run.js";

const t = gate(test, ["root", "ip", "qemu-system-x86_64", "nbdkit", "chromium"], "vmhop demo");
t(
  "vmhop demo --json --report: a whole VM crosses the WAN, every check true, its page renders, nothing left behind",
  async () => {
    const dir = tempDir("vmhop-demo-report-");
    const page = join(dir.path, "report.html");
    const r = demo(["--json", "--report", page]);
    const code = await within(r.exited, 900_000, "the demo to end");
    const last = r.stdout().trim().split("\n").at(-1) ?? "";
    assert.is(code, 0, `exit ${code}\nstdout: ${r.stdout()}\nstderr: ${r.stderr().slice(-6000)}`);
    const j = JSON.parse(last) as Record<string, unknown>;
    for (const k of [
      "switchover_ms",
      "bytes_before_resume",
      "max_guest_gap_ms",
      "total_ms",
      "disk_local_ms",
      "address_gap_ms",
      "tcp_survived",
      "memory_verified",
      "disk_verified",
      "address_verified",
      "source_disk_unchanged",
    ])
      assert.ok(k in j, `the JSON lacks ${k}`);
    assert.is(j.state, "done");
    for (const k of [
      "memory_verified",
      "disk_verified",
      "source_disk_unchanged",
      "address_verified",
      "tcp_survived",
    ])
      assert.is(j[k], true, `${k}: ${JSON.stringify(j)}`);
    // Times are measured from one request: their order is the migration's (never their size).
    const [sw, total, local] = [j.switchover_ms, j.total_ms, j.disk_local_ms] as number[];
    assert.ok(sw > 0 && total >= sw && local >= sw, JSON.stringify({ sw, total, local }));
    assert.ok((j.max_guest_gap_ms as number) > 0);
    assert.ok((j.address_gap_ms as number) >= 0);
    // The disk: some blocks identical to the source at switch-over, none wrong.
    const disk = j.disk as { same: number; badCount: number; blocks: number };
    assert.ok(disk.blocks > 0 && disk.same > 0 && disk.badCount === 0, JSON.stringify(disk));
    // Progress and the timeline went to stderr; stdout holds the object only.
    assert.is(r.stdout().trim().split("\n").length, 1);
    assert.match(r.stderr(), /MigrateVm vm1 h1 → h2/);
    // Every service's ready line names its /metrics address.
    for (const svc of [
      "control-plane",
      "netreach anchor",
      "s1 block-server",
      "s2 page-server",
      "s2 netreach agent",
    ])
      assert.match(r.stderr(), new RegExp(`${svc} ready, metrics 127\\.0\\.0\\.1:\\d+`), svc);
    assert.equal(leftovers(r.child.pid!), []);
    // The report page, from the control-plane's record and the demo's measurements.
    assert.ok(existsSync(page), "no report page");
    await assertRenders(page, [
      ...["pending", "preparing", "migrating", "switched", "completing", "relocating", "done"],
      ...["prepared", "settled"],
      ...["guest heartbeat gaps", "silence: IPv6 ping", "silence: IPv4 ping"],
    ]);
    dir.cleanup();
  },
);

t("a demo interrupted with SIGINT while it runs removes everything it started", async () => {
  const r = demo([]);
  // Interrupt once the VM runs and the migration is requested (the most to tear down).
  await within(
    new Promise<void>((resolve) => {
      const check = () => {
        if (/MigrateVm vm1/.test(r.stdout())) resolve();
        else setTimeout(check, 50);
      };
      check();
    }),
    600_000,
    "the demo to request the migration",
  );
  r.child.kill("SIGINT");
  const code = await within(r.exited, 120_000, "the interrupted demo to end");
  assert.is(code, 130, r.stdout().slice(-3000));
  assert.match(r.stdout(), /SIGINT: stopping everything the demo started/);
  assert.equal(leftovers(r.child.pid!), []);
});

t.run();
