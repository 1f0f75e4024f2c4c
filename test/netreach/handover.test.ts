// A VM moves site to site while a correspondent pings its home addresses (IPv6 and IPv4, 10 ms
// apart) and keeps a TCP connection to it. Real kernel routes (SRv6 or VXLAN-GPE) in real namespaces.

import { setTimeout as sleep } from "node:timers/promises";
import * as assert from "uvu/assert";
import { summarisePings } from "../../services/netreach/probe/analysis.js";
import { ip } from "../../testbed/netns.js";
import { GATEWAY_MAC, type NetreachBed, sidsOf, VM } from "../../testbed/netreach/bed.js";
import { pingFromCn, pingHome } from "../../testbed/netreach/pings.js";
import { bedSuite } from "./bed-suite.js";
import { encapTo, perDataplane } from "./dataplanes.js";
import { assertTcpSurvivesMove } from "./tcp-across-move.js";

await perDataplane("netreach handover in namespaces", ["root", "ip"], (t, dataplane) => {
  let bed: NetreachBed;
  let neighboursAfterRegistration = "";

  bedSuite(t, { base: "nr-ho-", dataplane, sites: 3, place: false }, (b) => (bed = b));
  t.before(async () => {
    // As if the VM had lived on the home link: the correspondent caches the VM's own MAC.
    for (const a of [VM.homeIpv6[0], VM.homeIpv4[0]])
      await ip(bed.ns.cn, "neigh", "replace", a, "lladdr", VM.mac, "dev", "cn0", "nud", "stale");
    const o = await bed.place(0);
    assert.ok(o.accepted);
    neighboursAfterRegistration = await ip(bed.ns.cn, "neigh", "show", "dev", "cn0");
  });

  const pingFrom = (target: string, count: number) => pingFromCn(bed, target, count, { waitMs: 500 });

  t("first registration announces the home addresses at the anchor's MAC (NA, gratuitous ARP)", () => {
    for (const a of [VM.homeIpv6[0], VM.homeIpv4[0]])
      assert.match(
        neighboursAfterRegistration,
        new RegExp(`${a} lladdr ${GATEWAY_MAC}`),
        neighboursAfterRegistration,
      );
  });

  t("the home addresses answer at the first site", async () => {
    for (const a of [VM.homeIpv6[0], VM.homeIpv4[0]]) {
      const s = summarisePings(await pingFrom(a, 20).result);
      assert.is(s.lost, 0, `${a}: ${JSON.stringify(s)}`);
    }
    const route = await ip(bed.ns.anchor, "-6", "route", "show", `${VM.homeIpv6[0]}/128`);
    assert.match(route, encapTo(dataplane, sidsOf(1).sid6));
  });

  t("continuous ping loses at most a few echoes per move, IPv6 and IPv4", async () => {
    const [p6, p4] = pingHome(bed, 400, { waitMs: 500 });
    await Promise.all([p6.ready, p4.ready]);
    await sleep(800);
    const m1 = await bed.move(1, "mbb-fp");
    assert.ok(m1.outcome.accepted);
    await sleep(800);
    await bed.settle();
    const m2 = await bed.move(2, "mbb-fp");
    assert.ok(m2.outcome.accepted);
    await sleep(800);
    await bed.settle();
    for (const [fam, p] of [
      ["IPv6", p6],
      ["IPv4", p4],
    ] as const) {
      const s = summarisePings(await p.result);
      assert.is(s.sent, 400);
      // Two moves, at most 5 echoes lost each; and none lost in steady state.
      assert.ok(s.lost <= 10, `${fam}: ${JSON.stringify(s)}`);
      assert.ok(s.longestLossRun <= 5, `${fam}: ${JSON.stringify(s)}`);
    }
    const route = await ip(bed.ns.anchor, "-6", "route", "show", `${VM.homeIpv6[0]}/128`);
    assert.match(route, encapTo(dataplane, sidsOf(3).sid6));
    const route4 = await ip(bed.ns.anchor, "-4", "route", "show", `${VM.homeIpv4[0]}/32`);
    assert.match(route4, encapTo(dataplane, sidsOf(3).sid4));
    // The forwarding pointers are gone once settled.
    assert.is((await ip(bed.ns.sites[0], "-6", "route", "show", `${VM.homeIpv6[0]}/128`)).trim(), "");
    assert.is((await ip(bed.ns.sites[1], "-6", "route", "show", `${VM.homeIpv6[0]}/128`)).trim(), "");
  });

  t("a TCP connection to the VM stays open across a move", async () => {
    await assertTcpSurvivesMove(bed, {
      to: VM.homeIpv6[0],
      port: 7007,
      count: 150,
      leadMs: 500,
      site: 0,
      mode: "mbb-fp",
    });
  });

  t("a stale or replayed binding update is refused and changes nothing", async () => {
    // The VM is at site 1 with the newest generation.
    const before = await ip(bed.ns.anchor, "-6", "route", "show", `${VM.homeIpv6[0]}/128`);
    const stored = await bed.anchor.cache.get(VM.vmId);
    assert.is(stored?.site, "s1");
    const replay = await bed.anchor.updateBinding({
      vmId: VM.vmId,
      ...bed.sites[2].endpoint,
      generation: bed.generation,
    });
    assert.not.ok(replay.accepted);
    const stale = await bed.anchor.updateBinding({ vmId: VM.vmId, ...bed.sites[1].endpoint, generation: 1 });
    assert.not.ok(stale.accepted);
    if (!stale.accepted) assert.match(stale.reason, /stale generation 1/);
    assert.equal(await bed.anchor.cache.get(VM.vmId), stored);
    assert.is(await ip(bed.ns.anchor, "-6", "route", "show", `${VM.homeIpv6[0]}/128`), before);
    const s = summarisePings(await pingFrom(VM.homeIpv6[0], 20).result);
    assert.is(s.lost, 0);
  });

  t("re-registration with a newer generation drops only the addresses the VM no longer has", async () => {
    const at = bed.sites[bed.at].endpoint;
    const gen = ++bed.generation;
    const o = await bed.anchor.register({
      ...VM,
      homeIpv4: [],
      ...at,
      generation: gen,
      lifetimeSeconds: 300,
    });
    assert.ok(o.accepted);
    assert.is((await ip(bed.ns.anchor, "-4", "route", "show", `${VM.homeIpv4[0]}/32`)).trim(), "");
    assert.not.match(await ip(bed.ns.anchor, "neigh", "show", "proxy"), VM.homeIpv4[0]);
    assert.is(summarisePings(await pingFrom(VM.homeIpv6[0], 10).result).lost, 0);
    const back = await bed.anchor.register({
      ...VM,
      ...at,
      generation: ++bed.generation,
      lifetimeSeconds: 300,
    });
    assert.ok(back.accepted);
    assert.is(summarisePings(await pingFrom(VM.homeIpv4[0], 10).result).lost, 0);
  });
});
