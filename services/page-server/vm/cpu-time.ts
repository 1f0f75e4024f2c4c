// A process's CPU time so far (user + system, all its threads) from /proc/<pid>/stat: what a
// VM's QEMU has used, read by whoever wants the VM's CPU use (placement's load collector).
import { readFileSync } from "node:fs";

// USER_HZ: the unit of /proc's utime and stime, 100 on every Linux architecture (ABI).
const TICKS_PER_S = 100;

/** Seconds of CPU the process has used; 0 when it is gone or unreadable. */
export function cpuSeconds(pid: number | undefined): number {
  if (!pid) return 0;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return 0;
  }
  // The command name (field 2) is in parentheses and may hold spaces: count fields after it.
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields 14 (utime) and 15 (stime) of proc(5); f[0] is field 3.
  const ticks = Number(f[11]) + Number(f[12]);
  return Number.isFinite(ticks) ? ticks / TICKS_PER_S : 0;
}
