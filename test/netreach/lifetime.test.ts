// Binding lifetime: the site agent's refreshes keep a binding alive; without them it expires,
// the anchor withdraws its routes, and only a newer binding update brings it back.

import { setTimeout as sleep } from "node:timers/promises";
import * as assert from "uvu/assert";
import { summarisePings } from "../../services/netreach/probe/analysis.js";
import { ip } from "../../testbed/netns.js";
import { type NetreachBed, VM } from "../../testbed/netreach/bed.js";
import { pingFromCn } from "../../testbed/netreach/pings.js";
import { bedSuite } from "./bed-suite.js";
import { perDataplane } from "./dataplanes.js";

await perDataplane("netreach binding lifetime", ["root", "ip"], (t, dataplane) => {
  let bed: NetreachBed;

  bedSuite(t, { base: "nr-lt-", dataplane, sites: 2, place: 2 }, (b) => (bed = b));
  const ping = async (to: string) => summarisePings(await pingFromCn(bed, to, 5).result);

  t("refreshes keep a 2 s binding alive past its lifetime", async () => {
    const first = (await bed.anchor.cache.get(VM.vmId))!.expiresAtMs;
    await sleep(3500);
    const b = await bed.anchor.cache.get(VM.vmId);
    assert.is(b?.state, "active");
    assert.ok(b!.expiresAtMs > first, "the lifetime was extended");
    assert.is((await ping(VM.homeIpv6[0])).lost, 0);
  });

  t("without refreshes it expires: routes withdrawn, traffic stops, a newer update revives it", async () => {
    bed.sites[0].stopRefresh(VM.vmId);
    await sleep(3500);
    assert.is((await bed.anchor.cache.get(VM.vmId))?.state, "expired");
    assert.is((await ip(bed.ns.anchor, "-6", "route", "show", `${VM.homeIpv6[0]}/128`)).trim(), "");
    assert.is((await ping(VM.homeIpv4[0])).received, 0);
    assert.not.ok(
      (await bed.anchor.refresh(VM.vmId, bed.generation)).accepted,
      "an expired binding is not refreshed",
    );
    const o = await bed.sites[0].attach(VM, "vport", ++bed.generation, 30);
    assert.ok(o.accepted);
    assert.is(o.binding?.state, "active");
    for (const a of [VM.homeIpv6[0], VM.homeIpv4[0]]) assert.is((await ping(a)).lost, 0, a);
  });
});
