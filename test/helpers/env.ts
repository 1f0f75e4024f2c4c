// What the machine offers to a test, and how a test that lacks it says so.
// In CI (CI=1) a missing tool or root is a failure, not a skip: CI installs everything.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

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
 * Returns null when every requirement is met, else the reason to skip.
 * Requirements: command names, or "root".
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
 * printing why once.
 */
export function gate<T extends { skip: unknown; run: () => void }>(t: T, reqs: string[], what: string): T {
  const reason = missing(reqs);
  if (reason === null) return t;
  console.log(`SKIP ${what}: ${reason}`);
  const skip = t.skip as (name: string, fn?: unknown) => void;
  const noop = () => {};
  const hook = Object.assign(() => {}, { each: noop });
  const standIn = Object.assign((name: string, fn?: unknown) => skip(name, fn), {
    skip,
    only: skip,
    before: hook,
    after: hook,
    run: () => t.run(),
  });
  return standIn as unknown as T;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export function tempDir(prefix = "vmhop-test-"): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}
