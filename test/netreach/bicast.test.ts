// Make-before-break with bicasting: the anchor duplicates the VM's traffic to the destination
// from preparation until the binding update (nft dup), so over a 15 ms one-way WAN the
// correspondent loses (almost) nothing, also on a first visit to a site, a TCP connection stays up, and
// the copies stop with the update.
// Plus the persistent nft process on its own: errors name the command, tolerated ones pass.
import * as assert from "uvu/assert";
import { BatchError, idempotent } from "../../services/netreach/dataplane/batch-process.js";
import { bicastTables } from "../../services/netreach/dataplane/commands.js";
import { NftBatch } from "../../services/netreach/dataplane/nft-batch.js";
import { createNetns } from "../../testbed/netns.js";
import { type NetreachBed, VM } from "../../testbed/netreach/bed.js";
import { underPing } from "../../testbed/netreach/pings.js";
import { rejects } from "../helpers/assert.js";
import { bedSuite } from "./bed-suite.js";
import { perDataplane } from "./dataplanes.js";
import { assertTcpSurvivesMove } from "./tcp-across-move.js";

const ONE_WAY_MS = 15;
await perDataplane("netreach bicast handover", ["root", "ip", "nft"], (t, dataplane) => {
  let bed: NetreachBed;

  bedSuite(t, { base: "nr-bc-", dataplane, sites: 3, wanDelayMs: ONE_WAY_MS }, (b) => (bed = b));

  async function moveUnderPing(to: number) {
    const {
      result: m,
      v6,
      v4,
    } = await underPing(bed, () => bed.move(to, "mbb-bicast"), {
      count: 150,
      leadMs: 400,
    });
    assert.ok(m.outcome.accepted, m.outcome.accepted ? "" : m.outcome.reason);
    return { v6, v4 };
  }

  t("first visits and a return: at most one echo lost, copies stop with the update", async () => {
    for (const to of [1, 2, 0]) {
      const { v6, v4 } = await moveUnderPing(to);
      // Nothing takes the old site's detour; one echo of slack for a loaded machine's relay.
      assert.ok(v6.lost <= 1, `IPv6 to site ${to + 1}: lost ${v6.lost}`);
      assert.ok(v4.lost <= 1, `IPv4 to site ${to + 1}: lost ${v4.lost}`);
      assert.equal(await bed.bicastElements(), [], "no bicast left after the binding update");
    }
  });

  t("a TCP connection to the IPv6 home address survives a bicast move", async () => {
    await assertTcpSurvivesMove(bed, {
      to: VM.homeIpv6[0],
      port: 7009,
      count: 100,
      leadMs: 300,
      site: bed.at === 0 ? 1 : 0,
      mode: "mbb-bicast",
    });
  });

  t(
    "a prepared move bicasts until it is refused or superseded; the anchor refuses a bicast elsewhere",
    async () => {
      const from = bed.at;
      const to = from === 0 ? 1 : 0;
      assert.ok((await bed.anchor.prepareAttach(VM.vmId, bed.sites[to].endpoint.site)).accepted);
      await bed.sites[to].prepare(VM, "vport");
      await bed.anchor.startBicast(VM.vmId, bed.sites[to].endpoint);
      assert.is((await bed.bicastElements()).length, 2, "one element per home address");
      const other = bed.sites.find((_, i) => i !== from && i !== to)!;
      await rejects(() => bed.anchor.startBicast(VM.vmId, other.endpoint), /not moving there/);
      // The VM stays: deregistering withdraws the bicast with the binding.
      await bed.anchor.deregister(VM.vmId);
      assert.equal(await bed.bicastElements(), []);
    },
  );

  t("nft batch: errors name the failing command, tolerated ones pass, the process stays usable", async () => {
    const ns = `${bed.opts.prefix}nft`;
    await createNetns(ns);
    const nft = new NftBatch(ns);
    try {
      await nft.apply(bicastTables());
      try {
        await nft.apply([
          "add element ip nr_bicast to { 10.9.9.9 : 169.254.0.1 }",
          "add element ip nr_nope to { 10.9.9.9 : 1.1.1.1 }",
        ]);
        assert.unreachable("a missing table must fail");
      } catch (err) {
        assert.instance(err, BatchError);
        assert.is((err as BatchError).failures.length, 1);
        assert.match((err as BatchError).failures[0].command, /nr_nope/);
      }
      await nft.apply(
        ["delete element ip nr_bicast to { 10.9.9.9 }", "delete element ip nr_bicast to { 10.9.9.9 }"],
        {
          tolerate: idempotent,
        },
      );
      try {
        await nft.apply(["bad\ncommand"]);
        assert.unreachable("a command with a newline must be refused");
      } catch (err) {
        assert.instance(err, BatchError);
      }
      await nft.apply(["add element ip nr_bicast to { 10.9.9.8 : 169.254.0.2 }"]);
    } finally {
      await nft.close();
    }
  });
});
