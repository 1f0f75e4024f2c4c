// What a page-server keeps on disk for a restart, without QEMU: files replaced atomically, a
// corrupt migration.json that no longer stops the page-server from starting, and the
// per-VM fencing tokens.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { createLogger } from "../../services/common/log.js";
import { HostError } from "../../services/page-server/errors.js";
import { Fences } from "../../services/page-server/fence.js";
import { PageHost } from "../../services/page-server/host.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";

const dir = tempDir("vmhop-saved-");
test.after(() => dir.cleanup());

const atomicFile = new URL("../../services/common/atomic-file.ts", import.meta.url).pathname;

/** Replaces `path` with 64 KiB in a child whose file-size limit (ulimit -f 8) cuts the write short. */
function writeUnderLimit(path: string, how: "atomic" | "plain"): void {
  const big = JSON.stringify("x".repeat(64 << 10));
  const code =
    how === "atomic"
      ? `const { writeFileAtomic } = await import(${JSON.stringify(atomicFile)}); writeFileAtomic(${JSON.stringify(path)}, ${big});`
      : `const { writeFileSync } = await import("node:fs"); writeFileSync(${JSON.stringify(path)}, ${big});`;
  spawnSync(
    "sh",
    ["-c", 'ulimit -f 8; exec "$0" --import tsx --input-type=module -e "$1"', process.execPath, code],
    {
      stdio: "ignore",
    },
  );
}

test("a write cut short leaves the old file whole (a plain write truncates it)", () => {
  const old = JSON.stringify({ id: "m1", role: "source" });
  const plain = join(dir.path, "plain.json");
  writeFileSync(plain, old);
  writeUnderLimit(plain, "plain");
  assert.not.equal(readFileSync(plain, "utf8"), old, "the file-size limit did not cut the plain write");
  const atomic = join(dir.path, "atomic.json");
  writeFileSync(atomic, old);
  writeUnderLimit(atomic, "atomic");
  assert.is(readFileSync(atomic, "utf8"), old);
});

test("a corrupt migration.json is reported and skipped: the page-server starts, the VM is adopted", async () => {
  const root = join(dir.path, "run");
  const spec = { name: "vm1", vcpus: 1, memoryMib: 64, kernel: "/nonexistent/vmlinuz" };
  for (const name of ["vm1", "vm2"]) {
    mkdirSync(join(root, name), { recursive: true });
    writeFileSync(join(root, name, "spec.json"), JSON.stringify({ ...spec, name }));
  }
  const half = '{"id":"mig-1","role":"sou';
  writeFileSync(join(root, "vm1", "migration.json"), half);
  writeFileSync(join(root, "vm2", "migration.json"), JSON.stringify({ id: "mig-2", role: "destination" }));
  const lines: string[] = [];
  const host = new PageHost({ runRoot: root, log: createLogger({}, { sink: (l) => lines.push(l) }) });
  await host.open();
  try {
    // Neither QEMU runs (no pidfile): both come back crashed, and neither stops the other.
    assert.is(host.get("vm1").state, "crashed");
    assert.is(host.get("vm2").state, "crashed");
    const warning = lines.map((l) => JSON.parse(l)).find((l) => l.vm === "vm1" && l.level === "warn");
    assert.ok(warning, `no warning about vm1's migration in ${lines.join("\n")}`);
    assert.match(warning.err.message, /migration\.json is not valid JSON/);
    assert.is(readFileSync(join(root, "vm1", "migration.json"), "utf8"), half, "the file was changed");
  } finally {
    await host.close();
  }
});

test("fencing tokens: an older one is refused, 0 is accepted, the highest survives a restart", () => {
  const root = join(dir.path, "fences");
  const f = new Fences(root);
  f.check("vm1", 5);
  f.check("vm1", 5); // the same migration again
  f.check("vm1", 0); // unfenced caller
  f.check("vm2", 1); // per VM
  const refused = (fences: Fences, token: number, re: RegExp) => {
    try {
      fences.check("vm1", token);
      assert.unreachable(`token ${token} accepted`);
    } catch (err) {
      assert.instance(err, HostError);
      assert.is((err as HostError).kind, "precondition");
      assert.match((err as Error).message, re);
    }
  };
  refused(f, 3, /^stale fencing token 3 for VM vm1 \(seen 5\)$/);
  const again = new Fences(root); // a restarted page-server
  refused(again, 4, /stale fencing token 4 for VM vm1 \(seen 5\)/);
  again.check("vm1", 7);
  refused(again, 5, /\(seen 7\)/);
  assert.is(new Fences(root).highest("vm1"), 7);
  assert.is(new Fences(root).highest("vm2"), 1);
  assert.is(new Fences(root).highest("vm3"), 0);

  writeFileSync(join(root, "vm2", "fence.json"), "{");
  const broken = new Fences(root);
  broken.check("vm2", 0); // unfenced calls still go through
  try {
    broken.check("vm2", 2);
    assert.unreachable("a fenced call went through an unreadable fence");
  } catch (err) {
    assert.is((err as HostError).kind, "unavailable");
    assert.match((err as Error).message, /vm2\/fence\.json holds no fencing token: fix or remove it/);
  }
  assert.ok(existsSync(join(root, "vm2", "fence.json")));
});

test.run();
