// Per-day TSV layout (../shared/data/planetlab): one line per VM, name then one percentage per sample.
import { readFileSync } from "node:fs";
import { type DayTraces, parsePercent, SAMPLES_PER_DAY, TraceError, type VmTrace } from "./trace.js";

export function parseDayTsv(text: string, file: string, day: string, samples = SAMPLES_PER_DAY): DayTraces {
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  const vms: VmTrace[] = [];
  lines.forEach((raw, i) => {
    const lineNo = i + 1;
    const cols = raw.replace(/\r$/, "").split("\t");
    if (cols[0].trim() === "") throw new TraceError(file, lineNo, "missing VM name");
    if (cols.length - 1 !== samples)
      throw new TraceError(
        file,
        lineNo,
        `expected ${samples} values after the name, found ${cols.length - 1}`,
      );
    const values = new Float64Array(samples);
    for (let j = 0; j < samples; j++) values[j] = parsePercent(cols[j + 1], file, lineNo, `value ${j + 1}`);
    vms.push({ name: cols[0], samples: values });
  });
  if (vms.length === 0) throw new TraceError(file, 1, "no VMs in file");
  return { day, vms };
}

export function readDayTsv(file: string, day: string): DayTraces {
  return parseDayTsv(readFileSync(file, "utf8"), file, day);
}
