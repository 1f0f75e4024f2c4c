// The namespace bed a netreach scenario suite runs on: created before the suite (after removing
// what an earlier, killed run left under the same base), the VM placed at the first site, and
// destroyed after the suite.
import * as assert from "uvu/assert";
import { destroyStaleNetns, uniqueNetnsPrefix } from "../../testbed/netns.js";
import { type BedOptions, NetreachBed } from "../../testbed/netreach/bed.js";
import type { Suite } from "./dataplanes.js";

export interface BedSuiteOptions extends Omit<BedOptions, "prefix"> {
  /** Namespace prefix base, e.g. "nr-bc-": made unique to this run (uniqueNetnsPrefix). */
  base: string;
  /** Place the VM at the first site (true, or its binding lifetime in seconds); default true. */
  place?: boolean | number;
}

/** Registers the bed's set-up and tear-down on `t`; `use` receives the bed once it is built. */
export function bedSuite(t: Suite, opts: BedSuiteOptions, use: (bed: NetreachBed) => void): void {
  const { base, place = true, ...bedOpts } = opts;
  let bed: NetreachBed | undefined;
  t.before(async () => {
    await destroyStaleNetns(base);
    bed = await NetreachBed.create({ ...bedOpts, prefix: uniqueNetnsPrefix(base) });
    use(bed);
    if (place !== false) {
      const o = await bed.place(0, place === true ? undefined : place);
      assert.ok(o.accepted, o.accepted ? "" : o.reason);
    }
  });
  t.after(async () => {
    await bed?.destroy();
  });
}
