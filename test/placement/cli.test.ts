import * as assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CliError } from "../../services/cli/errors.js";
import { run } from "../../services/placement/cli.js";
import { test } from "../helpers/uvu.js";

async function capture(argv: string[]): Promise<{ code: number; out: string }> {
  const lines: string[] = [];
  const orig = console.log;
  console.log = (...a: unknown[]) => lines.push(a.join(" "));
  try {
    const code = await run(argv);
    return { code, out: lines.join("\n") };
  } finally {
    console.log = orig;
  }
}

const dir = mkdtempSync(join(tmpdir(), "vmhop-cli-"));
const line = (name: string, v: number) => [name, ...Array(288).fill(String(v))].join("\t");
writeFileSync(
  join(dir, "d1.tsv"),
  `${line("a", 40)}\n${line("b", 20)}\n${line("c", 60)}\n${line("d", 10)}\n`,
);
writeFileSync(
  join(dir, "d2.tsv"),
  `${line("a", 10)}\n${line("b", 90)}\n${line("c", 30)}\n${line("d", 50)}\n`,
);

const KEYS = ["energy_kwh", "slatah", "pdm", "slav", "esv", "migrations", "plan_ms_p99"];

test("simulate --json: {days: [{day, metrics}], mean: {metrics}}, fractions", async () => {
  const { code, out } = await capture([
    "simulate",
    "--traces",
    dir,
    "--policy",
    "THR-MMT-0.8",
    "--hosts",
    "8",
    "--json",
  ]);
  assert.equal(code, 0);
  const doc = JSON.parse(out);
  assert.deepEqual(Object.keys(doc), ["days", "mean"]);
  assert.deepEqual(
    doc.days.map((d: { day: string }) => d.day),
    ["d1", "d2"],
  );
  for (const d of doc.days) {
    assert.deepEqual(Object.keys(d), ["day", ...KEYS]);
    for (const k of KEYS) assert.equal(typeof d[k], "number");
    assert.ok(d.slatah >= 0 && d.slatah <= 1 && d.pdm >= 0 && d.pdm <= 1);
    assert.ok(Math.abs(d.esv - d.energy_kwh * d.slav) < 1e-12);
  }
  assert.deepEqual(Object.keys(doc.mean), KEYS);
  assert.equal(doc.mean.energy_kwh, (doc.days[0].energy_kwh + doc.days[1].energy_kwh) / 2);
});

test("simulate --days picks days; table output names the policy", async () => {
  const { out } = await capture([
    "simulate",
    "--traces",
    dir,
    "--days",
    "d2",
    "--policy",
    "dvfs",
    "--hosts",
    "8",
  ]);
  assert.match(out, /policy dvfs, cost model cloudsim/);
  assert.match(out, /^d2 /m);
  assert.doesNotMatch(out, /^d1 /m);
  assert.match(out, /^mean /m);
});

test("user errors are CliErrors with a clear message", async () => {
  await assert.rejects(
    capture(["simulate"]),
    (e: unknown) => e instanceof CliError && /--traces DIR/.test(e.message),
  );
  await assert.rejects(
    capture(["simulate", "--traces", dir, "--policy", "nope"]),
    (e: unknown) => e instanceof CliError && /unknown policy "nope"/.test(e.message),
  );
  await assert.rejects(
    capture(["simulate", "--traces", dir, "--cost-model", "magic"]),
    (e: unknown) => e instanceof CliError && /cloudsim or postcopy/.test(e.message),
  );
  await assert.rejects(
    capture(["simulate", "--traces", dir, "--days", "d9"]),
    (e: unknown) => e instanceof CliError && /no traces for day d9/.test(e.message),
  );
  await assert.rejects(
    capture(["serve", "--collect-load-s", "2"]),
    (e: unknown) => e instanceof CliError && /--collect-load-s .* give --control-plane too/.test(e.message),
  );
  await assert.rejects(
    capture(["serve", "--collect-load-s", "2", "--control-plane", "127.0.0.1:1", "--host-model", "G9"]),
    (e: unknown) => e instanceof CliError && /--host-model must be one of G4, G5, got G9/.test(e.message),
  );
  await assert.rejects(
    capture(["frobnicate"]),
    (e: unknown) => e instanceof CliError && /unknown placement command/.test(e.message),
  );
});

test("bad trace files surface file and line", async () => {
  const bad = mkdtempSync(join(tmpdir(), "vmhop-cli-bad-"));
  try {
    writeFileSync(join(bad, "x.tsv"), `${line("a", 1)}\n${line("b", 1).replace(/\t1$/, "\tzz")}\n`);
    await assert.rejects(
      capture(["simulate", "--traces", bad, "--policy", "dvfs"]),
      (e: unknown) =>
        e instanceof CliError &&
        e.message.includes(`${join(bad, "x.tsv")}:2:`) &&
        /not a number/.test(e.message),
    );
  } finally {
    rmSync(bad, { recursive: true, force: true });
  }
});

test("policies lists the default and the CloudSim set", async () => {
  const { out } = await capture(["policies", "--json"]);
  const names = JSON.parse(out).map((p: { name: string }) => p.name);
  assert.equal(names[0], "vmhop");
  for (const n of [
    "dvfs",
    "npa",
    "THR-MMT-0.8",
    "IQR-MMT-1.5",
    "MAD-MMT-2.5",
    "LR-MMT-1.2",
    "LRR-MMT-1.2",
    "THR-RS-0.8",
    "LR-MC-1.2",
    "IQR-MU-1.5",
  ])
    assert.ok(names.includes(n), n);
});

test.after(() => rmSync(dir, { recursive: true, force: true }));
test.run();
