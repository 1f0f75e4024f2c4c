// CloudSim's original layout: a directory per day, one file per VM, one percentage per line.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { type DayTraces, parsePercent, SAMPLES_PER_DAY, TraceError, type VmTrace } from "./trace.js";

export function parseVmFile(text: string, file: string, name: string, samples = SAMPLES_PER_DAY): VmTrace {
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  // CloudSim reads exactly `samples` lines; more is tolerated only as trailing blank lines.
  if (lines.length < samples)
    throw new TraceError(file, lines.length + 1, `expected ${samples} lines, found ${lines.length}`);
  for (let i = samples; i < lines.length; i++)
    if (lines[i].trim() !== "") throw new TraceError(file, i + 1, `expected ${samples} lines, found more`);
  const values = new Float64Array(samples);
  for (let i = 0; i < samples; i++) values[i] = parsePercent(lines[i], file, i + 1, "value");
  return { name, samples: values };
}

export function readCloudSimDir(dir: string, day: string): DayTraces {
  // Sorted by name so results do not depend on the filesystem's listing order.
  const names = readdirSync(dir, { withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => d.name)
    .sort();
  if (names.length === 0) throw new TraceError(dir, 0, "no trace files in directory");
  const vms = names.map((n) => parseVmFile(readFileSync(join(dir, n), "utf8"), join(dir, n), n));
  return { day, vms };
}
