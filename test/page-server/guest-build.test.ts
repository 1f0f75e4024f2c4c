// The guest builder: kernel payload extraction (pure), an idempotent re-run, clear errors.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import * as assert from "uvu/assert";
import { buildGuest } from "../../deploy/guest/build/build.js";
import { GuestBuildError, run } from "../../deploy/guest/build/run.js";
import { extractVmlinux, locateKernelPayload } from "../../deploy/guest/build/vmlinux.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { ensureGuest } from "./guest.js";

const buildTest = gate(test, ["apt-get", "dpkg", "gcc", "xz"], "build the test guest");
const root = new URL("../..", import.meta.url).pathname;

/** A minimal bzImage: boot header with the payload fields, then `payload`. */
function fakeBzImage(payload: Buffer, setupSects = 4): Buffer {
  const img = Buffer.alloc((setupSects + 1) * 512 + 64 + payload.length);
  img[0x1f1] = setupSects;
  img.writeUInt32LE(0x53726448, 0x202); // "HdrS"
  img.writeUInt16LE(0x20f, 0x206);
  img.writeUInt32LE(64, 0x248); // payload offset within the protected-mode part
  img.writeUInt32LE(payload.length, 0x24c);
  payload.copy(img, (setupSects + 1) * 512 + 64);
  return img;
}

test("locateKernelPayload finds the payload through the boot header and names its format", async () => {
  const elf = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46]), Buffer.alloc(100, 7)]);
  const gz = gzipSync(elf);
  const img = fakeBzImage(gz, 3);
  assert.equal(locateKernelPayload(img), { offset: 4 * 512 + 64, length: gz.length, format: "gzip" });
  assert.equal(await extractVmlinux(img), elf);
});

test("extractVmlinux: clear errors for a non-bzImage, unknown compression, non-ELF payload", async () => {
  assert.throws(() => locateKernelPayload(Buffer.alloc(4096)), /not a bzImage/);
  assert.throws(
    () => locateKernelPayload(fakeBzImage(Buffer.from("nonsense payload"))),
    /unknown kernel payload/,
  );
  try {
    await extractVmlinux(fakeBzImage(gzipSync(Buffer.from("not an elf"))));
    assert.unreachable("accepted a non-ELF kernel");
  } catch (err) {
    assert.match((err as Error).message, /not an ELF/);
  }
});

buildTest("a second build is all up to date and the artefacts are in place", async () => {
  await ensureGuest();
  const lines: string[] = [];
  const { built } = await buildGuest({ progress: (l) => lines.push(l) });
  assert.equal(built, []);
  assert.ok(lines.some((l) => l === "initramfs: up to date"));
  assert.ok(lines.some((l) => l.startsWith("ready: kernel")));
});

buildTest("`vmhop guest build` with an unknown kernel package fails clearly, exit 1", () => {
  const out = tempDir("vmhop-guest-");
  try {
    const r = spawnSync(
      join(root, "bin/vmhop.js"),
      ["guest", "build", "--out", out.path, "--kernel-package", "vmhop-no-such-package"],
      { encoding: "utf8" },
    );
    assert.is(r.status, 1);
    assert.match(r.stderr, /guest build failed: apt-get download .*vmhop-no-such-package/);
    assert.match(r.stderr, /apt-get update/);
  } finally {
    out.cleanup();
  }
});

test("a build tool that exits without reading its input fails with its status, not a broken pipe", async () => {
  // 4 MiB does not fit the pipe: writing it breaks the pipe once the tool has gone.
  const err = await run("sh", ["-c", "echo no thanks >&2; exit 3"], { input: Buffer.alloc(4 << 20) }).catch(
    (e) => e,
  );
  assert.instance(err, GuestBuildError);
  assert.match(String(err.message), /exited with 3/);
  assert.match(String(err.message), /no thanks/);
});

test("`vmhop guest` with an unknown subcommand prints usage, exit 2", () => {
  const r = spawnSync(join(root, "bin/vmhop.js"), ["guest", "frobnicate"], { encoding: "utf8" });
  assert.is(r.status, 2);
  assert.match(r.stderr, /unknown guest command 'frobnicate'/);
  assert.match(r.stderr, /usage: vmhop guest build/);
});

test.run();
