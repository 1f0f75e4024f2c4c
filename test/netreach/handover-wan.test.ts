// Handover over a WAN with 15 ms one-way delay (router links as VXLAN through the project's
// userspace delay relay): with a forwarding pointer the correspondent loses (almost) nothing;
// without one, what is in flight to the old site for about one signalling delay is lost.

import { setTimeout as sleep } from "node:timers/promises";
import * as assert from "uvu/assert";
import { summarisePings } from "../../services/netreach/probe/analysis.js";
import { destroyStaleNetns, uniqueNetnsPrefix } from "../../testbed/netns.js";
import { type HandoverMode, NetreachBed, VM } from "../../testbed/netreach/bed.js";
import { startPing } from "../../testbed/netreach/probe-process.js";
import { perDataplane } from "./dataplanes.js";
import { assertTcpSurvivesMove } from "./tcp-across-move.js";

// Unique per run: two runs at once (or another helper's tests) never share a namespace.
const PREFIX = uniqueNetnsPrefix("nr-hw-");
const ONE_WAY_MS = 15;
await perDataplane("netreach handover over a delayed WAN", ["root", "ip"], (t, dataplane) => {
  let bed: NetreachBed;

  t.before(async () => {
    await destroyStaleNetns("nr-hw-");
    bed = await NetreachBed.create({ dataplane, prefix: PREFIX, sites: 2, wanDelayMs: ONE_WAY_MS });
    assert.ok((await bed.place(0)).accepted);
  });

  t.after(async () => {
    await bed?.destroy();
  });

  async function moveUnderPing(mode: HandoverMode) {
    const probes = [VM.homeIpv6[0], VM.homeIpv4[0]].map((to) => startPing(bed.ns.cn, to, 150));
    await Promise.all(probes.map((p) => p.ready));
    await sleep(500);
    const m = await bed.move(bed.at === 0 ? 1 : 0, mode);
    assert.ok(m.outcome.accepted);
    const [v6, v4] = await Promise.all(probes.map(async (p) => summarisePings(await p.result)));
    await bed.settle();
    return { v6, v4 };
  }

  t("the WAN delays traffic as configured", async () => {
    const s = summarisePings(await startPing(bed.ns.cn, VM.homeIpv6[0], 10).result);
    assert.is(s.lost, 0);
    assert.ok(s.rttMedianMs! >= 2 * ONE_WAY_MS, `rtt ${s.rttMedianMs} ms`);
  });

  t("make-before-break with a forwarding pointer loses at most one echo per family", async () => {
    const { v6, v4 } = await moveUnderPing("mbb-fp");
    assert.ok(v6.lost <= 1, JSON.stringify(v6));
    assert.ok(v4.lost <= 1, JSON.stringify(v4));
  });

  t("without a forwarding pointer some echoes are lost, but a bounded number", async () => {
    const { v6, v4 } = await moveUnderPing("mbb");
    // In flight to the old site while the binding update crosses the WAN: about 2 x 15 ms / 10 ms.
    for (const s of [v6, v4]) assert.ok(s.lost >= 1 && s.lost <= 8, JSON.stringify(s));
  });

  t("a TCP connection survives a move over the WAN", async () => {
    await assertTcpSurvivesMove(bed, {
      to: VM.homeIpv4[0],
      port: 7008,
      count: 100,
      leadMs: 300,
      site: bed.at === 0 ? 1 : 0,
      mode: "mbb",
    });
  });
});
