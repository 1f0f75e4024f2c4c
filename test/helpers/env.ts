// What the machine offers to a test, and how a test that lacks it says so.
// In CI (CI=1) a missing tool or root is a failure, not a skip: CI installs everything.
import { execFileSync } from "node:child_process";

export function hasCommand(cmd: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

export const isRoot = process.getuid?.() === 0;
export const inCI = process.env.CI === "1" || process.env.CI === "true";

/**
 * Returns null when every requirement is met, else the reason to skip; under CI=1 it throws
 * instead. Requirements: command names, or "root".
 */
export function missing(reqs: string[]): string | null {
  const absent = reqs.filter((r) => (r === "root" ? !isRoot : !hasCommand(r)));
  if (absent.length === 0) return null;
  const reason = `needs ${absent.join(", ")}`;
  if (inCI) throw new Error(`CI must provide: ${reason}`);
  return reason;
}

/**
 * The suite itself when every requirement is met; otherwise a stand-in that registers each
 * test as skipped and ignores hooks (so a suite's before() never starts what is missing),
 * printing why once. Under CI=1 a missing requirement throws instead (see missing()).
 */
export function gate<T extends { skip: unknown; run: () => void }>(t: T, reqs: string[], what: string): T {
  return gateOn(t, missing(reqs), what);
}

/** gate() for a requirement that is not a command (data on disk, a kernel feature): `reason` null when met. */
export function gateOn<T extends { skip: unknown; run: () => void }>(
  t: T,
  reason: string | null,
  what: string,
): T {
  if (reason !== null && inCI) throw new Error(`CI must provide: ${reason} (${what})`);
  return reason === null ? t : skipping(t, what, reason, false);
}

/**
 * For one variant of a scenario that another variant covers in the same run (e.g. the SRv6 data
 * plane on a kernel without SRv6 lightweight tunnels, where the same tests run on the vxlan one):
 * with a non-null reason the tests are skipped with it, and test/run.mjs counts and lists them as
 * skips even under CI=1. Only for that case: a missing tool is gate()'s, and fails CI.
 */
export function gateVariant<T extends { skip: unknown; run: () => void }>(
  t: T,
  reason: string | null,
  what: string,
): T {
  return reason === null ? t : skipping(t, what, reason, true);
}

/**
 * For tests of data that lives outside the repository (../shared beside the checkout): absent
 * data is a counted, listed skip even under CI=1, since a clone elsewhere has no such neighbour.
 * Only for that case: a missing tool or kernel feature is gate()'s or gateOn()'s, and fails CI.
 */
export function gateData<T extends { skip: unknown; run: () => void }>(
  t: T,
  reason: string | null,
  what: string,
): T {
  return reason === null ? t : skipping(t, what, reason, true);
}

// What test/run.mjs reads: `SKIP what: reason` once, then one `  - skipped [what] NAME` line
// (`  - skipped (variant) [what] NAME` for gateVariant) per test registered; it counts a file's
// skips as legitimate only when uvu's Skipped equals the number of these lines.
function skipping<T extends { skip: unknown; run: () => void }>(
  t: T,
  what: string,
  reason: string,
  variant: boolean,
): T {
  console.log(`SKIP ${what}: ${reason}`);
  const skip = t.skip as (name: string, fn?: unknown) => void;
  const mark = (name: string, fn?: unknown) => {
    console.log(`  - skipped ${variant ? "(variant) " : ""}[${what}] ${name.replace(/\s+/g, " ")}`);
    skip(name, fn);
  };
  const noop = () => {};
  const hook = Object.assign(() => {}, { each: noop });
  const standIn = Object.assign(mark, {
    skip: mark,
    only: mark,
    before: hook,
    after: hook,
    run: () => t.run(),
  });
  return standIn as unknown as T;
}
