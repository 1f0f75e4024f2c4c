// Idempotent build steps: a step is skipped when its outputs exist and the key of its inputs
// matches the one stamped when it last ran. Keys use size and mtime, so a re-run is instant.
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface Step {
  name: string;
  outputs: string[];
  /** Anything that, when changed, must rebuild the outputs. */
  key: () => string;
  make: () => Promise<string | undefined>;
}

export type Progress = (line: string) => void;

export function fileKey(...paths: string[]): string {
  return paths
    .map((p) => {
      const s = statSync(p);
      return `${p}:${s.size}:${Math.trunc(s.mtimeMs)}`;
    })
    .join("|");
}

export async function runStep(
  stampDir: string,
  step: Step,
  opts: { force?: boolean; progress: Progress },
): Promise<"built" | "up to date"> {
  mkdirSync(stampDir, { recursive: true });
  const stamp = join(stampDir, `${step.name}.key`);
  const key = step.key();
  const fresh =
    !opts.force &&
    step.outputs.every((o) => existsSync(o)) &&
    existsSync(stamp) &&
    readFileSync(stamp, "utf8") === key;
  if (fresh) {
    opts.progress(`${step.name}: up to date`);
    return "up to date";
  }
  opts.progress(`${step.name}: building…`);
  const t0 = Date.now();
  const note = await step.make();
  writeFileSync(stamp, key);
  opts.progress(
    `${step.name}: done in ${((Date.now() - t0) / 1000).toFixed(1)} s${note ? ` (${note})` : ""}`,
  );
  return "built";
}
