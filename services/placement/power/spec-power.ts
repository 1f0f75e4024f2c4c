// Host power from a SPECpower table: watts at 0 %, 10 %, …, 100 % CPU, linear in between.
export interface PowerModel {
  readonly name: string;
  /** Watts at utilisation u in [0, 1]. */
  power(u: number): number;
  readonly maxPower: number;
}

export function specPowerModel(name: string, table: readonly number[]): PowerModel {
  if (table.length !== 11) throw new Error(`${name}: a SPECpower table needs 11 values, got ${table.length}`);
  const t = [...table];
  return {
    name,
    maxPower: t[10],
    power(u: number): number {
      if (!(u >= 0 && u <= 1)) throw new RangeError(`${name}: utilisation ${u} outside [0, 1]`);
      const x = u * 10;
      const i = Math.floor(x);
      if (i >= 10) return t[10];
      return t[i] + (t[i + 1] - t[i]) * (x - i);
    },
  };
}

/** HP ProLiant ML110 G4 (Xeon 3040), SPECpower_ssj2008. */
export const HP_PROLIANT_G4 = specPowerModel(
  "HP ProLiant ML110 G4",
  [86, 89.4, 92.6, 96, 99.5, 102, 106, 108, 112, 114, 117],
);
/** HP ProLiant ML110 G5 (Xeon 3075), SPECpower_ssj2008. */
export const HP_PROLIANT_G5 = specPowerModel(
  "HP ProLiant ML110 G5",
  [93.7, 97, 101, 105, 110, 116, 121, 125, 129, 133, 135],
);
