// Handover over a WAN with 15 ms one-way delay (router links as VXLAN through the project's
// userspace delay relay): with a forwarding pointer the correspondent loses (almost) nothing;
// without one, what is in flight to the old site for about one signalling delay is lost.

import * as assert from "uvu/assert";
import { summarisePings } from "../../services/netreach/probe/analysis.js";
import { type HandoverMode, type NetreachBed, VM } from "../../testbed/netreach/bed.js";
import { pingFromCn, underPing } from "../../testbed/netreach/pings.js";
import { bedSuite } from "./bed-suite.js";
import { perDataplane } from "./dataplanes.js";
import { assertTcpSurvivesMove } from "./tcp-across-move.js";

const ONE_WAY_MS = 15;
await perDataplane("netreach handover over a delayed WAN", ["root", "ip"], (t, dataplane) => {
  let bed: NetreachBed;

  bedSuite(t, { base: "nr-hw-", dataplane, sites: 2, wanDelayMs: ONE_WAY_MS }, (b) => (bed = b));

  async function moveUnderPing(mode: HandoverMode) {
    const {
      result: m,
      v6,
      v4,
    } = await underPing(bed, () => bed.move(bed.at === 0 ? 1 : 0, mode), {
      count: 150,
      leadMs: 500,
    });
    assert.ok(m.outcome.accepted);
    return { v6, v4 };
  }

  t("the WAN delays traffic as configured", async () => {
    const s = summarisePings(await pingFromCn(bed, VM.homeIpv6[0], 10).result);
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
