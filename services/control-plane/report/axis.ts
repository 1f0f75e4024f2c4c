// Scales and tick marks for the report's charts (pure): a linear map from a value domain onto
// pixels, and round tick values (1, 2 or 5 times a power of ten) across a domain.

export interface Scale {
  (v: number): number;
  domain: [number, number];
  range: [number, number];
}

/** Maps [d0, d1] linearly onto [r0, r1]; an empty domain maps everything to r0. */
export function linear(d0: number, d1: number, r0: number, r1: number): Scale {
  const span = d1 - d0;
  const f = (v: number) => (span === 0 ? r0 : r0 + ((v - d0) / span) * (r1 - r0));
  return Object.assign(f, { domain: [d0, d1] as [number, number], range: [r0, r1] as [number, number] });
}

/** A round step (1, 2 or 5 × 10^k) giving about `target` intervals across `span` (> 0). */
export function niceStep(span: number, target = 8): number {
  if (!(span > 0) || !Number.isFinite(span)) return 1;
  const raw = span / target;
  const pow = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5]) if (m * pow >= raw) return m * pow;
  return 10 * pow;
}

/** Every multiple of `step` in [d0, d1]. */
export function ticks(d0: number, d1: number, step: number): number[] {
  const out: number[] = [];
  if (!(step > 0)) return out;
  for (let v = Math.ceil(d0 / step) * step; v <= d1 + step * 1e-9 && out.length < 1000; v += step)
    out.push(Math.round(v / step) * step);
  return out;
}
