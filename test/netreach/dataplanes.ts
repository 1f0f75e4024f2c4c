// A namespace scenario runs once per netreach data plane (SRv6, VXLAN-GPE), each as a suite of
// its own. A data plane this kernel lacks is skipped with the missing feature as the reason,
// counted and listed, as long as another data plane runs the same scenario here; when none can,
// the suite fails under CI=1 like any missing requirement.
import { type KernelSupport, probeKernel } from "../../services/netreach/dataplane/probe.js";
import { DATAPLANES, type DataplaneKind } from "../../services/netreach/dataplane/tunnel.js";
import { gate, gateOn, gateVariant, missing } from "../helpers/env.js";
import { suite } from "../helpers/uvu.js";

export type Suite = ReturnType<typeof suite>;

/** Registers `scenario` once per data plane, gated on `reqs` (commands or "root") and the kernel. */
export async function perDataplane(
  what: string,
  reqs: string[],
  scenario: (t: Suite, dataplane: DataplaneKind) => void,
): Promise<void> {
  const absent = missing(reqs); // throws under CI=1
  const support: KernelSupport | null = absent === null ? await probeKernel() : null;
  const runnable = support ? DATAPLANES.filter((k) => support[k] === null) : [];
  for (const dataplane of DATAPLANES) {
    const name = `${what} (${dataplane})`;
    let t = suite(name);
    if (absent !== null || !support) t = gate(t, reqs, name);
    else if (support[dataplane] !== null)
      t = runnable.length
        ? gateVariant(t, `${support[dataplane]}; the same tests run on ${runnable.join(", ")}`, name)
        : gateOn(t, support[dataplane], name);
    scenario(t, dataplane);
    t.run();
  }
}

/** What `ip route show` prints for a route that encapsulates to endpoint `sid`. */
export function encapTo(dataplane: DataplaneKind, sid: string): RegExp {
  const s = sid.replace(/[.:]/g, (c) => `\\${c}`);
  return dataplane === "srv6"
    ? new RegExp(`encap seg6 mode encap\\.red segs 1 \\[ ${s} \\]`)
    : new RegExp(`encap ip6 id \\d+ src \\S+ dst ${s} .*csum`);
}
