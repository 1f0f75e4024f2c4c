// uvu's `test` and `suite`, with hooks that cannot fail quietly. Every test file imports
// these instead of "uvu" (assertions stay "uvu/assert").
//
// uvu 0.5 runs a suite inside try/finally and returns from the finally block, so an error
// thrown by a `before` hook is swallowed: the suite's tests never run and the process exits 0
// with `Total: 6 Passed: 0`. Here every hook is wrapped: an error in one is printed at once
// (naming the hook, the suite and the file:line that registered it, with the stack) and the
// process exits non-zero whatever uvu's own summary says.
// - before: the error is rethrown, so the suite's tests do not run (uvu counts them not passed).
// - before.each: rethrown, so uvu counts that test failed and goes on with the next one.
// - after, after.each: not rethrown (uvu would either run after.each a second time or stop the
//   suite, and later cleanup hooks would not run); the file fails all the same.
// A suite that declares tests and never calls run() also fails the file, at exit.
import { relative } from "node:path";
import type { Callback, Test } from "uvu";
import * as uvu from "uvu";

type Context = Record<string, unknown>;
type HookKind = "before" | "after" | "before.each" | "after.each";

const problems: string[] = [];
const suites: { label: string; site: string; pending: () => number }[] = [];

process.on("exit", (code) => {
  if (code === 0) {
    for (const s of suites) {
      const n = s.pending();
      if (n > 0) problems.push(`${s.label} (${s.site}) declared ${n} test(s) and never called run()`);
    }
  }
  if (problems.length === 0) return;
  process.stderr.write(`\nTEST FILE FAILED (${problems.length} problem(s) outside the tests):\n`);
  for (const p of problems) process.stderr.write(`  ${p}\n`);
  process.exitCode = 1;
});

/** file:line of the test file that called into this module (first frame outside test/helpers). */
function callSite(): string {
  for (const line of (new Error().stack ?? "").split("\n").slice(1)) {
    const m = /[\s(](?:file:\/\/)?(\/[^():\s]+):(\d+):\d+\)?\s*$/.exec(line);
    if (!m || m[1].includes("/node_modules/") || m[1].includes("/test/helpers/")) continue;
    return `${relative(process.cwd(), m[1])}:${m[2]}`;
  }
  return relative(process.cwd(), process.argv[1] ?? "?");
}

function report(kind: HookKind, label: string, site: string, testName: string, err: unknown): void {
  const consequence = {
    before: "none of the suite's tests ran",
    "before.each": `test "${testName}" counts as failed`,
    after: "the suite's cleanup did not finish",
    "after.each": `cleanup after test "${testName}" did not finish`,
  }[kind];
  const what = `${kind} hook of ${label} (${site}) threw: ${consequence}`;
  problems.push(what);
  process.exitCode = 1;
  const detail = err instanceof Error ? (err.stack ?? String(err)) : String(err);
  process.stderr.write(`\nHOOK FAILED: ${what}\n${detail.replace(/^/gm, "    ")}\n\n`);
}

function wrap<T>(inner: Test<T>, name: string): Test<T> {
  const label = name ? `suite "${name}"` : "the file's default suite";
  let declared = 0;
  suites.push({ label, site: callSite(), pending: () => declared });
  const hook =
    (kind: HookKind, register: (fn: Callback<T>) => void, rethrow: boolean) => (fn: Callback<T>) => {
      const site = callSite();
      register(async (ctx) => {
        try {
          await fn(ctx);
        } catch (err) {
          report(kind, label, site, ctx.__test__, err);
          if (rethrow) throw err;
        }
      });
    };
  const t = ((title: string, fn: Callback<T>) => {
    declared++;
    inner(title, fn);
  }) as Test<T>;
  t.only = (title, fn) => {
    declared++;
    inner.only(title, fn);
  };
  t.skip = (title, fn) => {
    declared++;
    inner.skip(title, fn);
  };
  t.before = Object.assign(hook("before", inner.before, true), {
    each: hook("before.each", inner.before.each, true),
  });
  t.after = Object.assign(hook("after", inner.after, false), {
    each: hook("after.each", inner.after.each, false),
  });
  t.run = () => {
    declared = 0;
    inner.run();
  };
  return t;
}

export function suite<T = Context>(title?: string, context?: T): Test<T> {
  return wrap(uvu.suite<T>(title, context), title ?? "");
}

export const test: Test<Context> = wrap(uvu.test, "");
export type { Callback, Test };
