// Utilisation at any time from 5-minute samples, as CloudSim's UtilizationModelPlanetLabInMemory:
// exact at sample instants, linear in between; the sample after the last is 0.
export function utilizationAt(samples: Float64Array, t: number, interval: number): number {
  const at = (i: number) => (i < samples.length ? samples[i] : 0);
  if (t % interval === 0) return at(t / interval);
  const i1 = Math.floor(t / interval);
  const i2 = Math.ceil(t / interval);
  const u1 = at(i1);
  const delta = (at(i2) - u1) / ((i2 - i1) * interval);
  return u1 + delta * (t - i1 * interval);
}
