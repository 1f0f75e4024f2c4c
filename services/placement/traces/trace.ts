// One VM's CPU demand for a day: utilisation fractions (0..1), one per 5-minute sample.
export interface VmTrace {
  name: string;
  /** Utilisation as a fraction of the VM's MIPS, one value per sample. */
  samples: Float64Array;
}

export interface DayTraces {
  day: string;
  vms: VmTrace[];
}

/** Samples per day at a 300 s interval, as in the PlanetLab data. */
export const SAMPLES_PER_DAY = 288;

/** A trace file that does not follow the format; message names the file and line. */
export class TraceError extends Error {
  constructor(
    readonly file: string,
    readonly line: number,
    reason: string,
  ) {
    super(`${file}:${line}: ${reason}`);
    this.name = "TraceError";
  }
}

/** Parses one utilisation percentage (integer or decimal, 0..100); throws TraceError otherwise. */
export function parsePercent(text: string, file: string, line: number, what: string): number {
  const s = text.trim();
  if (s === "") throw new TraceError(file, line, `${what}: missing value`);
  if (!/^[0-9]+(\.[0-9]+)?$/.test(s))
    throw new TraceError(file, line, `${what}: not a number: ${JSON.stringify(s)}`);
  const v = Number(s);
  if (v > 100) throw new TraceError(file, line, `${what}: ${v} is above 100 %`);
  return v / 100;
}
