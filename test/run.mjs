#!/usr/bin/env node
// The one test command: lint, typecheck, then every test file in its own process
// (uvu loads every given file into one process; isolating files keeps ports, namespaces
// and crashed children from leaking between suites: each file runs in a process group of
// its own, killed whole once the file is done, so servers a crashed or timed-out file
// started die with it). Ends with `N passed, N failed`.
import { spawn, spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const args = process.argv.slice(2);
const noLint = args.includes("--no-lint");
const filters = args.filter((a) => !a.startsWith("--"));
const slow = args.includes("--slow") || process.env.VMHOP_SLOW_TESTS === "1";

let passed = 0;
let failed = 0;
let skipped = 0;
const failures = [];

function step(name, cmd, cmdArgs) {
  const t0 = Date.now();
  const r = spawnSync(cmd, cmdArgs, { cwd: root, stdio: "inherit" });
  const ok = r.status === 0;
  console.log(`${ok ? "ok  " : "FAIL"} ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  if (ok) passed++;
  else {
    failed++;
    failures.push(name);
  }
}

function findTests(dir) {
  const out = [];
  for (const e of readdirSync(dir)) {
    const p = join(dir, e);
    if (e === "node_modules" || e === "fixtures") continue;
    if (statSync(p).isDirectory()) out.push(...findTests(p));
    else if (e.endsWith(".test.ts") && (slow || !e.endsWith(".slow.test.ts"))) out.push(p);
  }
  return out.sort();
}

if (!noLint && filters.length === 0) {
  step("lint (biome, buf lint, buf format)", "npm", ["run", "-s", "lint"]);
  step("typecheck (tsc)", "npm", ["run", "-s", "typecheck"]);
  step("generated code is reproducible", "node", ["test/check-gen.mjs"]);
}

const files = findTests(join(root, "test")).filter(
  (f) => filters.length === 0 || filters.some((x) => relative(root, f).includes(x)),
);
/** Runs one test file in its own process group; kills the group when it ends or times out. */
function runFile(f) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", f], {
      cwd: root,
      env: { ...process.env, FORCE_COLOR: "0" },
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (b) => (stdout += b));
    child.stderr.on("data", (b) => (stderr += b));
    const killGroup = (sig) => {
      try {
        process.kill(-child.pid, sig);
      } catch {}
    };
    let timedOut = false;
    const timer = setTimeout(
      () => {
        timedOut = true;
        killGroup("SIGTERM");
        setTimeout(() => killGroup("SIGKILL"), 5000).unref();
      },
      Number(process.env.VMHOP_TEST_FILE_TIMEOUT_MS ?? 600_000),
    );
    child.on("close", (status, signal) => {
      clearTimeout(timer);
      killGroup("SIGKILL"); // anything the file left running
      resolve({ status, signal: signal ?? (timedOut ? "SIGTERM (timeout)" : null), stdout, stderr });
    });
  });
}

for (const f of files) {
  const name = relative(root, f);
  const t0 = Date.now();
  const r = await runFile(f);
  const out = (r.stdout ?? "") + (r.stderr ?? "");
  const num = (label) => Number(new RegExp(`${label}:\\s+(\\d+)`).exec(out)?.[1] ?? 0);
  const total = num("Total");
  const ok = num("Passed");
  const skip = num("Skipped");
  const bad = Math.max(0, total - ok - skip);
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  if (r.status !== 0 || (total === 0 && skip === 0)) {
    // A crash or timeout counts as one failure beyond any failed tests it reported.
    const extra = bad === 0 ? 1 : 0;
    passed += ok;
    failed += bad + extra;
    skipped += skip;
    failures.push(name);
    console.log(out);
    console.log(
      `FAIL ${name}: ${ok}/${total} passed${r.signal ? ` (killed by ${r.signal})` : ""} (${secs} s)`,
    );
  } else {
    passed += ok;
    skipped += skip;
    for (const line of out.split("\n")) if (/^\s*SKIP\b/.test(line)) console.log(`  ${line.trim()}`);
    console.log(`ok   ${name}: ${ok}/${total} passed${skip ? `, ${skip} skipped` : ""} (${secs} s)`);
  }
}

if (failures.length) console.log(`\nfailed: ${failures.join(", ")}`);
if (skipped) console.log(`${skipped} skipped`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
