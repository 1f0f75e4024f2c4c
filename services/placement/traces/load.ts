// Finds a day's traces under a directory in either layout: DIR/<day>.tsv or DIR/<day>/ (one file per VM).
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { readCloudSimDir } from "./cloudsim-dir.js";
import type { DayTraces } from "./trace.js";
import { readDayTsv } from "./tsv.js";

/** Days available under dir, sorted. */
export function listDays(dir: string): string[] {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`${dir}: not a directory`);
  const days = new Set<string>();
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.isFile() && e.name.endsWith(".tsv")) days.add(e.name.slice(0, -4));
    else if (e.isDirectory()) days.add(e.name);
  }
  return [...days].sort();
}

export function loadDay(dir: string, day: string): DayTraces {
  const tsv = join(dir, `${day}.tsv`);
  if (existsSync(tsv)) return readDayTsv(tsv, day);
  const sub = join(dir, day);
  if (existsSync(sub) && statSync(sub).isDirectory()) return readCloudSimDir(sub, day);
  throw new Error(`no traces for day ${day} in ${dir} (looked for ${day}.tsv and ${day}/)`);
}
