// Short-term demand forecast for a VM: the larger of its demand now and a high quantile of its
// recent utilisation samples (PlanetLab loads are bursty; a peak seen recently tends to recur).
import type { Vm } from "../sim/cluster.js";

export interface ForecastOptions {
  /** Recent samples looked at. */
  window: number;
  /** Quantile of those samples (0..1). */
  quantile: number;
}

export function forecastMips(vm: Vm, o: ForecastOptions): number {
  const h = vm.history.slice(0, o.window);
  if (h.length === 0) return vm.req;
  const s = [...h].sort((a, b) => a - b);
  const q = s[Math.min(s.length - 1, Math.floor(o.quantile * s.length))];
  return Math.max(vm.req, q * vm.mips);
}
