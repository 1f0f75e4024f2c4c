// Robust statistics with CloudSim's exact conventions (MathUtil, Apache Commons Math).

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Median absolute deviation from the median. */
export function mad(xs: readonly number[]): number {
  if (xs.length === 0) return 0;
  const m = median(xs);
  return median(xs.map((x) => Math.abs(m - x)));
}

/** Interquartile range with CloudSim's quartile positions round(p·(n+1)) − 1. */
export function iqr(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const q1 = Math.round(0.25 * (s.length + 1)) - 1;
  const q3 = Math.round(0.75 * (s.length + 1)) - 1;
  return s[q3] - s[q1];
}

/** Ordinary least squares of y on x = 1..n; [intercept, slope]. */
export function linearFit(y: readonly number[]): [number, number] {
  const n = y.length;
  if (n < 2) throw new RangeError("a regression needs at least two points");
  let sx = 0;
  let sy = 0;
  for (let i = 0; i < n; i++) {
    sx += i + 1;
    sy += y[i];
  }
  const mx = sx / n;
  const my = sy / n;
  let sxx = 0;
  let sxy = 0;
  for (let i = 0; i < n; i++) {
    const dx = i + 1 - mx;
    sxx += dx * dx;
    sxy += dx * (y[i] - my);
  }
  const slope = sxy / sxx;
  return [my - slope * mx, slope];
}

/**
 * R² of an OLS regression (with intercept) of y on the columns of xs; NaN when the system is
 * singular or has no degrees of freedom.
 */
export function rSquared(y: readonly number[], xs: readonly (readonly number[])[]): number {
  const m = y.length;
  const p = xs.length + 1;
  if (m <= p) return Number.NaN;
  const row = (j: number) => [1, ...xs.map((c) => c[j])];
  const a = Array.from({ length: p }, () => new Array<number>(p + 1).fill(0));
  for (let j = 0; j < m; j++) {
    const r = row(j);
    for (let u = 0; u < p; u++) {
      for (let v = 0; v < p; v++) a[u][v] += r[u] * r[v];
      a[u][p] += r[u] * y[j];
    }
  }
  for (let col = 0; col < p; col++) {
    let piv = col;
    for (let r = col + 1; r < p; r++) if (Math.abs(a[r][col]) > Math.abs(a[piv][col])) piv = r;
    if (Math.abs(a[piv][col]) < 1e-12) return Number.NaN;
    [a[col], a[piv]] = [a[piv], a[col]];
    for (let r = 0; r < p; r++) {
      if (r === col) continue;
      const f = a[r][col] / a[col][col];
      for (let k = col; k <= p; k++) a[r][k] -= f * a[col][k];
    }
  }
  const beta = a.map((r, i) => r[p] / r[i]);
  const mean = y.reduce((s, v) => s + v, 0) / m;
  let ssr = 0;
  let sst = 0;
  for (let j = 0; j < m; j++) {
    const r = row(j);
    const fit = r.reduce((s, v, i) => s + v * beta[i], 0);
    ssr += (y[j] - fit) ** 2;
    sst += (y[j] - mean) ** 2;
  }
  return sst === 0 ? Number.NaN : 1 - ssr / sst;
}
