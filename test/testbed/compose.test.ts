// The compose test bed (testbed/compose/run.ts) really runs: docker-compose.yml under podman,
// the test guest created on host a with a disk and migrated with it to host b, and the bed torn
// down afterwards. The images are cached in /var/cache/vmhop (deploy/setup.sh builds them).
import { execFileSync } from "node:child_process";
import * as assert from "uvu/assert";
import { runComposeBed } from "../../testbed/compose/run.js";
import { gate } from "../helpers/env.js";
import { suite } from "../helpers/uvu.js";

const test = gate(
  suite("compose test bed"),
  ["root", "podman", "docker-compose", "mmdebstrap", "runc"],
  "compose test bed",
);

test("the guest migrates with its disk from host a to host b in containers, and the bed is gone after", async () => {
  const lines: string[] = [];
  const r = await runComposeBed({ say: (l) => lines.push(l) });
  console.log(lines.map((l) => `  [compose] ${l}`).join("\n"));
  assert.is(r.state, "done");
  assert.match(r.migrationId, /\S/);
  // The record says the disk moved too: every block local at b, promoted there.
  const disk = r.record.disk as
    | { blocksLocal?: number; blocksTotal?: number; promoted?: boolean }
    | undefined;
  assert.ok(disk && (disk.blocksTotal ?? 0) > 0, `disk progress in the record: ${JSON.stringify(disk)}`);
  assert.is(disk?.blocksLocal, disk?.blocksTotal);
  // The guest went on at b, verifying memory and disk, with no errors.
  assert.ok(r.heartbeats.atA > 0 && r.heartbeats.atB >= 3, JSON.stringify(r.heartbeats));
  assert.equal(r.heartbeats.errors, []);
  // Torn down: none of the bed's containers or volumes is left.
  const left = execFileSync("podman", ["ps", "-a", "--format", "{{.Names}}"], { encoding: "utf8" })
    .split("\n")
    .filter((n) => n.startsWith(`vmhop-tb-${process.pid}`));
  assert.equal(left, []);
  const vols = execFileSync("podman", ["volume", "ls", "--format", "{{.Name}}"], { encoding: "utf8" })
    .split("\n")
    .filter((n) => n.startsWith(`vmhop-tb-${process.pid}`));
  assert.equal(vols, []);
});

test.run();
