// The test runner itself (test/run.mjs with the uvu wrapper and gate helpers): a file whose
// tests did not all run or pass fails, loudly; a gated skip passes and is listed with its reason.
// Each case runs `node test/run.mjs --no-lint FIXTURE` on a file of ./fixtures (which the normal
// run never picks up).
import { spawnSync } from "node:child_process";
import * as assert from "uvu/assert";
import { test } from "../helpers/uvu.js";

const root = new URL("../..", import.meta.url).pathname;

function runner(fixture: string, ci = false): { status: number | null; out: string; last: string } {
  const r = spawnSync(process.execPath, ["test/run.mjs", "--no-lint", `test/runner/fixtures/${fixture}`], {
    cwd: root,
    encoding: "utf8",
    env: { ...process.env, CI: ci ? "1" : "", VMHOP_TEST_LINGER_MS: "300" },
    timeout: 120_000,
  });
  if (r.error) throw r.error;
  const out = r.stdout + r.stderr;
  return { status: r.status, out, last: r.stdout.trimEnd().split("\n").at(-1) ?? "" };
}

function fails(fixture: string, last: string, ...texts: (string | RegExp)[]): void {
  const r = runner(fixture);
  const ctx = `\n--- runner output for ${fixture} ---\n${r.out}`;
  assert.is(r.status, 1, `exit status${ctx}`);
  assert.is(r.last, last, `last line${ctx}`);
  assert.ok(r.out.includes(`FAIL test/runner/fixtures/${fixture}`), `FAIL line${ctx}`);
  for (const t of texts) assert.ok(typeof t === "string" ? r.out.includes(t) : t.test(r.out), `${t}${ctx}`);
}

test("a before hook that throws fails the file, naming hook and file, with every test counted failed", () => {
  fails(
    "before-throws.test.ts",
    "0 passed, 3 failed",
    'HOOK FAILED: before hook of suite "before throws" (test/runner/fixtures/before-throws.test.ts:6)',
    "fixture: setup failed in before",
    "3 of 3 test(s) did not pass",
  );
});

test("a test body that throws fails the file", () => {
  fails(
    "body-throws.test.ts",
    "1 passed, 1 failed",
    "fixture: the test body threw",
    "1 of 2 test(s) did not pass",
  );
});

test("tests declared and never run fail the file", () => {
  fails(
    "never-run.test.ts",
    "0 passed, 1 failed",
    "declared 2 test(s) and never called run()",
    "no uvu summary",
  );
});

test("an after hook that throws fails the file even though its tests passed", () => {
  fails(
    "after-throws.test.ts",
    "2 passed, 1 failed",
    'HOOK FAILED: after hook of suite "after throws" (test/runner/fixtures/after-throws.test.ts:8)',
    "fixture: cleanup failed in after",
  );
});

test("a file that finishes its tests but never exits is killed and fails", () => {
  fails(
    "lingers.test.ts",
    "1 passed, 1 failed",
    "tests finished but the process did not exit (something left open",
  );
});

test("a skip without a reason (uvu's own .skip) fails the file", () => {
  fails(
    "raw-skip.test.ts",
    "1 passed, 1 failed",
    "1 test(s) skipped without a reason (use gate or gateVariant)",
  );
});

test("a filter that matches no test file fails", () => {
  const r = spawnSync(process.execPath, ["test/run.mjs", "--no-lint", "no-such-test-file-anywhere"], {
    cwd: root,
    encoding: "utf8",
    timeout: 60_000,
  });
  assert.is(r.status, 1, r.stdout);
  assert.ok(r.stdout.includes('FAIL no test file matches "no-such-test-file-anywhere"'), r.stdout);
});

test("a passing file passes", () => {
  const r = runner("passes.test.ts");
  assert.is(r.status, 0, r.out);
  assert.is(r.last, "2 passed, 0 failed", r.out);
});

test("gated skips pass and are listed with their reasons before the last line", () => {
  const r = runner("gated.test.ts");
  assert.is(r.status, 0, r.out);
  assert.is(r.last, "1 passed, 0 failed", r.out);
  const summary = r.out.slice(r.out.indexOf("3 skipped (not run here):"));
  assert.ok(summary.length < r.out.length, r.out);
  assert.ok(
    summary.includes(
      "test/runner/fixtures/gated.test.ts: fixture tool: needs vmhop-fixture-no-such-tool (2 tests)",
    ),
    r.out,
  );
  assert.ok(summary.includes("(1 test, allowed under CI)"), r.out);
  assert.ok(r.out.includes("    - needs the tool"), r.out);
});

test("under CI=1 a gate on a missing tool fails; a variant skip does not", () => {
  const gated = runner("gated.test.ts", true);
  assert.is(gated.status, 1, gated.out);
  assert.ok(gated.out.includes("CI must provide: needs vmhop-fixture-no-such-tool"), gated.out);
  const variant = runner("variant.test.ts", true);
  assert.is(variant.status, 0, variant.out);
  assert.is(variant.last, "1 passed, 0 failed", variant.out);
  assert.ok(variant.out.includes("1 skipped (not run here):"), variant.out);
  assert.ok(variant.out.includes("allowed under CI"), variant.out);
});

test.run();
