// "Unseen-like" days for checking that a policy generalises: VMs sampled from several days,
// the whole day rotated by a random offset so no original day's timing survives. Seeded.
import { seededRng } from "../policies/random.js";
import type { DayTraces } from "./trace.js";

export function mixDays(sources: readonly DayTraces[], seed: number, minVms = 900, maxVms = 1500): DayTraces {
  const rng = seededRng(seed);
  const pool = sources.flatMap((d) => d.vms);
  if (pool.length === 0) throw new Error("mixDays needs at least one VM");
  const n = Math.min(pool.length, minVms + Math.floor(rng() * (maxVms - minVms + 1)));
  const left = [...pool];
  const picked = [];
  for (let i = 0; i < n; i++) picked.push(left.splice(Math.floor(rng() * left.length), 1)[0]);
  picked.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const len = picked[0].samples.length;
  const shift = Math.floor(rng() * len);
  return {
    day: `mix${seed}`,
    vms: picked.map((v) => ({
      name: v.name,
      samples: Float64Array.from({ length: len }, (_, k) => v.samples[(k + shift) % len]),
    })),
  };
}
