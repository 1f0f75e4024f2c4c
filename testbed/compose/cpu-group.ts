// A cgroup of our own for the bed's containers, weighted as that many processes. Without it all
// of podman's containers share one group (libpod_parent) whose CPU weight is that of a single
// process: on a busy machine eleven services then start in minutes instead of seconds, and the
// guest under TCG crawls. Best effort: where the cgroup cannot be made, the bed runs without it.
import { existsSync, mkdirSync, readdirSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const ROOT = "/sys/fs/cgroup";

export interface CpuGroup {
  /** For `--cgroup-parent` / compose's cgroup_parent. */
  name: string;
  /** Why the weight could not be set, when it could not. */
  problem?: string;
  remove(): void;
}

export function makeCpuGroup(name: string, processes: number): CpuGroup {
  // cgroup v1 has a cpu hierarchy of its own; v2 one tree with cpu.weight (100 = one process).
  const v1 = existsSync(join(ROOT, "cpu", "cpu.shares"));
  const dir = v1 ? join(ROOT, "cpu", name) : join(ROOT, name);
  let problem: string | undefined;
  try {
    mkdirSync(dir, { recursive: true });
    if (v1) writeFileSync(join(dir, "cpu.shares"), String(1024 * processes));
    else writeFileSync(join(dir, "cpu.weight"), String(Math.min(10000, 100 * processes)));
  } catch (err) {
    problem = `cannot weight the containers' cgroup ${dir}: ${(err as Error).message}`;
  }
  return {
    name: `/${name}`,
    problem,
    remove: () => {
      // podman leaves the parent, and under v1 its twin and the containers' empty groups in
      // every hierarchy; a group still in use stays (the next run's name differs).
      const tops = v1 ? readdirSync(ROOT).map((h) => join(ROOT, h, name)) : [dir];
      for (const top of tops) {
        if (!existsSync(top)) continue;
        for (const e of readdirSync(top, { withFileTypes: true }))
          if (e.isDirectory()) rmQuietly(join(top, e.name));
        rmQuietly(top);
      }
    },
  };
}

function rmQuietly(dir: string): void {
  try {
    rmdirSync(dir);
  } catch {
    // still in use
  }
}
