// Which of this process's descriptors a spawned process inherits (those not close-on-exec).
import { execFile } from "node:child_process";
import { readdirSync, readlinkSync } from "node:fs";
import { promisify } from "node:util";

/** What this process's descriptors point at (`socket:[inode]`, paths, …). */
export function openTargets(): Set<string> {
  const out = new Set<string>();
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      out.add(readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      // closed meanwhile (the directory's own descriptor)
    }
  }
  return out;
}

/** Those of `targets` a child process started now holds open. */
export async function inheritedOf(targets: Iterable<string>): Promise<string[]> {
  const { stdout } = await promisify(execFile)("sh", [
    "-c",
    'for f in /proc/$$/fd/*; do readlink "$f"; done; true',
  ]);
  const held = new Set(stdout.split("\n"));
  return [...targets].filter((t) => held.has(t));
}
