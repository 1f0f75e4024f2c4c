#!/usr/bin/env node
// The one test command: lint, typecheck, then every test file in its own process
// (uvu loads every given file into one process; isolating files keeps ports, namespaces
// and crashed children from leaking between suites: each file runs in a process group of
// its own, killed whole once the file is done, so servers a crashed or timed-out file
// started die with it). Ends with `N passed, N failed`.
//
// A test that did not run is never a pass. A file passes only when it exits 0, printed uvu's
// summary, declared at least one test, every test it ran passed, and every test it skipped
// was skipped through gate()/gateOn()/gateVariant() (test/helpers/env.ts), which print
// `SKIP what: reason` and one `  - skipped [what] NAME` line per test. Anything else fails,
// with the file's whole output, and counts every test that did not pass (at least 1).
// Under CI=1 only gateVariant's and gateData's skips (a variant whose scenario another variant
// covers; shared data that is not beside this checkout) are
// allowed. A file whose process is still alive VMHOP_TEST_LINGER_MS (default 20 s) after uvu's
// summary is killed and fails: something it started was left open.
//
// Arguments: FILTER… runs the test files whose path contains a FILTER (no lint); a FILTER that
// is the path of a file runs that file even inside a `fixtures` directory (the runner's own
// tests use this). --no-lint skips the lint step.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join, relative, resolve } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const args = process.argv.slice(2);
const noLint = args.includes("--no-lint");
const filters = args.filter((a) => !a.startsWith("--"));
const inCI = process.env.CI === "1" || process.env.CI === "true";
const timeoutMs = Number(process.env.VMHOP_TEST_FILE_TIMEOUT_MS ?? 600_000);
const lingerMs = Number(process.env.VMHOP_TEST_LINGER_MS ?? 20_000);

let passed = 0;
let failed = 0;
const failures = [];
const skips = []; // { file, what, reason, variant, names }

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
    else if (e.endsWith(".test.ts")) out.push(p);
  }
  return out.sort();
}

if (!noLint && filters.length === 0) {
  step("lint (biome, buf lint, buf format)", "npm", ["run", "-s", "lint"]);
  step("typecheck (tsc)", "npm", ["run", "-s", "typecheck"]);
  step("generated code is reproducible", "node", ["test/check-gen.mjs"]);
}

const isFile = (f) => existsSync(f) && statSync(f).isFile();
const explicit = filters.filter((f) => isFile(resolve(f))).map((f) => resolve(f));
const patterns = filters.filter((f) => !isFile(resolve(f)));
const found = findTests(join(root, "test"));
const files = [
  ...new Set([
    ...explicit,
    ...found.filter((f) => filters.length === 0 || patterns.some((x) => relative(root, f).includes(x))),
  ]),
];
for (const x of patterns) {
  if (found.some((f) => relative(root, f).includes(x))) continue;
  console.log(`FAIL no test file matches "${x}"`);
  failed++;
  failures.push(`filter "${x}"`);
}

/**
 * Runs one test file in its own process group; kills the group when it ends, times out, or
 * lingers after uvu's summary. `output` is stdout and stderr in the order they arrived.
 */
function runFile(f) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", f], {
      cwd: root,
      env: { ...process.env, FORCE_COLOR: "0" },
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let output = "";
    let ending = null; // "timeout" | "linger"
    let lingerTimer;
    const killGroup = (sig) => {
      try {
        process.kill(-child.pid, sig);
      } catch {}
    };
    const end = (why) => {
      if (ending) return;
      ending = why;
      killGroup("SIGTERM");
      setTimeout(() => killGroup("SIGKILL"), 5000).unref();
    };
    let scanned = 0; // stdout up to here has been searched for uvu's summary (whole lines only)
    child.stdout.on("data", (b) => {
      stdout += b;
      output += b;
      const lineEnd = stdout.lastIndexOf("\n") + 1;
      if (lineEnd <= scanned) return;
      // uvu's last two summary lines; a little text before `scanned` in case they were split.
      const lines = stdout.slice(Math.max(0, scanned - 100), lineEnd);
      scanned = lineEnd;
      if (/^\s*Skipped:\s+\d+\n\s*Duration:\s+[\d.]+m?s\n/m.test(lines)) {
        clearTimeout(lingerTimer);
        lingerTimer = setTimeout(() => end("linger"), lingerMs);
      }
    });
    child.stderr.on("data", (b) => (output += b));
    const timer = setTimeout(() => end("timeout"), timeoutMs);
    child.on("exit", () => killGroup("SIGKILL")); // anything the file left running
    child.on("close", (status, signal) => {
      clearTimeout(timer);
      clearTimeout(lingerTimer);
      killGroup("SIGKILL");
      resolve({ status, signal, ending, stdout, output });
    });
  });
}

/** What a file's output says: uvu's counts, the gate skips, and what is wrong with it. */
function judge(r) {
  const problems = [];
  if (r.ending === "linger")
    problems.push(
      `tests finished but the process did not exit (something left open: a server, client, child process or timer); killed ${lingerMs / 1000} s after uvu's summary`,
    );
  else if (r.ending === "timeout")
    problems.push(`killed after the per-file timeout of ${timeoutMs / 1000} s`);
  else if (r.status !== 0) problems.push(r.signal ? `killed by ${r.signal}` : `exit status ${r.status}`);

  const counts = [...r.stdout.matchAll(/^\s*Total:\s+(\d+)\s+Passed:\s+(\d+)\s+Skipped:\s+(\d+)/gm)];
  const sum = (i) => counts.reduce((a, m) => a + Number(m[i]), 0);
  const total = sum(1);
  const ok = sum(2);
  const uvuSkipped = sum(3);

  const groups = new Map();
  for (const m of r.stdout.matchAll(/^\s*- skipped (\(variant\) )?\[([^\]\n]*)\] (.*)$/gm)) {
    const what = m[2];
    if (!groups.has(what)) {
      const line = r.stdout.split("\n").find((l) => l.startsWith(`SKIP ${what}: `));
      const reason = line?.slice(`SKIP ${what}: `.length).trim() ?? null;
      groups.set(what, { what, reason, variant: !!m[1], names: [] });
    }
    groups.get(what).names.push(m[3].trim());
  }
  const gated = [...groups.values()];
  const nGated = gated.reduce((a, g) => a + g.names.length, 0);

  let notPassed = total - ok;
  if (counts.length === 0) {
    problems.push(
      "no uvu summary (Total/Passed/Skipped): no suite called run(), or the process died before the tests finished",
    );
  } else {
    if (total + uvuSkipped === 0) problems.push("declares no tests");
    if (notPassed > 0) problems.push(`${notPassed} of ${total} test(s) did not pass`);
    if (uvuSkipped > nGated) {
      problems.push(`${uvuSkipped - nGated} test(s) skipped without a reason (use gate or gateVariant)`);
      notPassed += uvuSkipped - nGated;
    } else if (uvuSkipped < nGated) {
      problems.push(
        `${nGated - uvuSkipped} gated test(s) never reached uvu (the suite's run() was not called)`,
      );
    }
  }
  for (const g of gated) {
    if (g.reason === null)
      problems.push(`tests skipped under [${g.what}] with no "SKIP ${g.what}: reason" line`);
    else if (inCI && !g.variant)
      problems.push(`CI=1: ${g.names.length} test(s) skipped (${g.what}: ${g.reason}); CI must run them`);
  }
  return { problems, total, ok, skipped: uvuSkipped, gated, notPassed };
}

for (const f of files) {
  const name = relative(root, f);
  const t0 = Date.now();
  const r = await runFile(f);
  const j = judge(r);
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  const skipNote = j.skipped ? `, ${j.skipped} skipped` : "";
  passed += j.ok;
  if (j.problems.length) {
    failed += Math.max(1, j.notPassed);
    failures.push(name);
    console.log(r.output.trimEnd());
    console.log(`FAIL ${name}: ${j.ok}/${j.total} passed${skipNote} (${secs} s)`);
    for (const p of j.problems) console.log(`     - ${p}`);
  } else {
    for (const g of j.gated) {
      console.log(`  SKIP ${g.what}: ${g.reason}${g.variant ? " (allowed under CI)" : ""}`);
      for (const n of g.names) console.log(`    - ${n}`);
      skips.push({ file: name, ...g });
    }
    console.log(`ok   ${name}: ${j.ok}/${j.total} passed${skipNote} (${secs} s)`);
  }
}

if (failures.length) console.log(`\nfailed: ${failures.join(", ")}`);
if (skips.length) {
  const n = skips.reduce((a, s) => a + s.names.length, 0);
  console.log(`\n${n} skipped (not run here):`);
  for (const s of skips) {
    const tests = `${s.names.length} test${s.names.length === 1 ? "" : "s"}`;
    console.log(`  ${s.file}: ${s.what}: ${s.reason} (${tests}${s.variant ? ", allowed under CI" : ""})`);
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
