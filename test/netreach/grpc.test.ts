// The anchor and two site agents as service processes (`vmhop netreach anchor|site serve`),
// driven over real gRPC in namespaces: register, move through the migration hooks under a
// continuous ping, a stale update refused without a change, and an anchor process restart.

import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import {
  BindingState,
  BindingStatus,
  HandoverMode,
  NetReachServiceClient,
  NetReachSiteServiceClient,
  type WatchHandoversResponse,
} from "../../gen/vmhop/v1/netreach.js";
import { call } from "../../services/common/grpc/call.js";
import { probeKernel } from "../../services/netreach/dataplane/probe.js";
import { DATAPLANES } from "../../services/netreach/dataplane/tunnel.js";
import { summarisePings } from "../../services/netreach/probe/analysis.js";
import { destroyStaleNetns, ip, uniqueNetnsPrefix } from "../../testbed/netns.js";
import { NetreachBed, sidsOf, VM } from "../../testbed/netreach/bed.js";
import { pingFromCn, pingHome } from "../../testbed/netreach/pings.js";
import { type ServiceProcess as Served, startService } from "../../testbed/service-process.js";
import { rejectsWithStatus } from "../helpers/assert.js";
import { scrape } from "../helpers/metrics.js";
import { type RedisHandle, startRedis } from "../helpers/redis.js";
import { encapTo, perDataplane } from "./dataplanes.js";

// Unique per run: two runs at once (or another helper's tests) never share a namespace.
const PREFIX = uniqueNetnsPrefix("nr-g-");
await perDataplane("netreach services over gRPC", ["root", "ip", "redis-server"], (t, dataplane) => {
  let bed: NetreachBed;
  let redis: RedisHandle;
  let anchor: Served;
  const sites: Served[] = [];
  let client: NetReachServiceClient;

  const vmNet = { vmId: VM.vmId, homeIpv6: VM.homeIpv6, homeIpv4: VM.homeIpv4 };

  const serve = (args: string[]) =>
    startService({ name: `netreach ${args[0]}`, args: ["netreach", ...args, "--metrics", "127.0.0.1:0"] });
  const anchorArgs = (listen: string) => bed.anchorServeArgs(listen, ["--store", redis.url]);
  const siteArgs = (k: number) => bed.siteServeArgs(k, anchor.grpc);

  /** Starts the anchor service; a restart listens where the site agents know it. */
  async function startAnchor(listen = "127.0.0.1:0"): Promise<void> {
    anchor = await serve(anchorArgs(listen));
    client?.close();
    client = new NetReachServiceClient(anchor.grpc, grpc.credentials.createInsecure());
  }

  t.before(async () => {
    await destroyStaleNetns("nr-g-");
    redis = await startRedis();
    bed = await NetreachBed.create({ dataplane, prefix: PREFIX, sites: 2, agents: false });
    await startAnchor();
    for (const k of [1, 2]) sites.push(await serve(siteArgs(k)));
  });

  t.after(async () => {
    if (process.env.NR_DEBUG) for (const s of [anchor, ...sites]) console.error(s?.stderr());
    client?.close();
    for (const s of [...sites, anchor]) await s?.stop();
    await bed?.destroy();
    await redis?.stop();
  });

  t("sites register with the anchor; bad requests get precise errors", async () => {
    const { sites: list } = await call(client, "listSites", {});
    assert.equal(
      list.map((s) => [s.site, s.endpoint?.sid6, s.endpoint?.sid4, s.dataplane]),
      [
        ["s1", sidsOf(1).sid6, sidsOf(1).sid4, dataplane],
        ["s2", sidsOf(2).sid6, sidsOf(2).sid4, dataplane],
      ],
    );
    // Every ready line and the anchor's status say which data plane runs.
    for (const s of [anchor, ...sites]) assert.is(s.ready.dataplane, dataplane, JSON.stringify(s.ready));
    const status = await call(client, "listBindings", {});
    assert.is(status.dataplane, dataplane);
    // A site speaking another tunnel could never exchange traffic with this anchor: refused.
    const other = dataplane === "srv6" ? "vxlan" : "srv6";
    await rejectsWithStatus(
      call(client, "registerSite", {
        site: {
          site: "s9",
          endpoint: { sid6: "fc00:9::d6", sid4: "fc00:9::d4" },
          controlAddress: "127.0.0.1:1",
          dataplane: other,
        },
      }),
      grpc.status.FAILED_PRECONDITION,
      new RegExp(`site s9 uses the ${other} data plane but the anchor uses ${dataplane}`),
    );
    assert.is((await call(client, "listSites", {})).sites.length, 2);
    await rejectsWithStatus(
      call(client, "updateBinding", {
        vmId: VM.vmId,
        site: "s1",
        endpoint: { sid6: "nope", sid4: sidsOf(1).sid4 },
        generation: 9,
        lifetimeSeconds: 0,
        attachedUnixMs: 0,
      }),
      grpc.status.INVALID_ARGUMENT,
      /invalid IPv6 SID 'nope'/,
    );
    await rejectsWithStatus(
      call(client, "prepareNetwork", {
        vmId: VM.vmId,
        toSite: "s1",
        port: "vport",
        mode: HandoverMode.HANDOVER_MODE_MBB_FP,
      }),
      grpc.status.NOT_FOUND,
      /vm vm-1 is not registered/,
    );
  });

  t("register over gRPC: the VM is reachable at its home addresses", async () => {
    const s1 = new NetReachSiteServiceClient(sites[0].grpc, grpc.credentials.createInsecure());
    await call(s1, "prepareVm", { vm: vmNet, port: "vport", hold: false });
    s1.close();
    await bed.plug(0);
    const r = await call(client, "registerVm", {
      binding: {
        vmId: VM.vmId,
        mac: VM.mac,
        homeIpv6: VM.homeIpv6,
        homeIpv4: VM.homeIpv4,
        site: "s1",
        endpoint: { sid6: sidsOf(1).sid6, sid4: sidsOf(1).sid4 },
        generation: 1,
        lifetimeSeconds: 300,
        expiresUnixMs: 0,
        state: BindingState.BINDING_STATE_UNSPECIFIED,
        movingTo: "",
      },
    });
    assert.is(r.status, BindingStatus.BINDING_STATUS_ACCEPTED);
    assert.is(r.binding?.endpoint?.sid6, sidsOf(1).sid6);
    for (const a of [VM.homeIpv6[0], VM.homeIpv4[0]]) {
      const s = summarisePings(await pingFromCn(bed, a, 20).result);
      assert.is(s.lost, 0, `${a}: ${JSON.stringify(s)}`);
    }
  });

  t("a data plane the kernel lacks is refused at start in one line naming the missing feature", async () => {
    const support = await probeKernel();
    for (const kind of DATAPLANES) {
      const args = anchorArgs("127.0.0.1:0").map((a, i, all) => (all[i - 1] === "--dataplane" ? kind : a));
      if (support[kind] === null) continue; // runs elsewhere in this file
      const err: Error = await serve(args).then(
        () => assert.unreachable(`the anchor started with the ${kind} data plane`),
        (e) => e,
      );
      const lines = err.message.split("\n").filter((l) => l.includes("not available"));
      assert.is(lines.length, 1, err.message);
      assert.ok(lines[0].includes(`data plane ${kind} is not available here: ${support[kind]}`), err.message);
      assert.not.match(err.message, /ip -batch| {4}at /, "no ip error or stack trace");
    }
    assert.is(support[dataplane], null, "this suite's own data plane was probed as present");
  });

  t(
    "a move through PrepareNetwork / SwitchOver / CleanupNetwork; the handover event carries its gap",
    async () => {
      const events: WatchHandoversResponse[] = [];
      const watch = client.watchHandovers({ vmId: VM.vmId });
      watch.on("data", (e: WatchHandoversResponse) => events.push(e));
      watch.on("error", () => undefined);
      await sleep(200); // the stream is open on the server before the move
      const probes = pingHome(bed, 150);
      await Promise.all(probes.map((p) => p.ready));
      await sleep(400);
      const prep = await call(client, "prepareNetwork", {
        vmId: VM.vmId,
        toSite: "s2",
        port: "vport",
        mode: HandoverMode.HANDOVER_MODE_MBB_FP,
      });
      assert.is(prep.binding?.state, BindingState.BINDING_STATE_MOVING);
      assert.is(prep.binding?.movingTo, "s2");
      await bed.plug(1);
      const { ack } = await call(client, "switchOver", {
        vmId: VM.vmId,
        fromSite: "s1",
        toSite: "s2",
        port: "vport",
        mode: HandoverMode.HANDOVER_MODE_MBB_FP,
        generation: 2,
      });
      assert.ok(ack?.accepted, JSON.stringify(ack));
      assert.is(ack?.status, BindingStatus.BINDING_STATUS_ACCEPTED);
      assert.is(ack?.binding?.site, "s2");
      for (const [i, p] of probes.entries()) {
        const s = summarisePings(await p.result);
        // Bounded, with room for gRPC hops on a loaded 2-core machine (in-process moves lose <= 5).
        assert.ok(s.lost <= 10, `${i ? "IPv4" : "IPv6"}: ${JSON.stringify(s)}`);
      }
      await call(client, "cleanupNetwork", { vmId: VM.vmId, fromSite: "s1" });
      assert.not.match(await ip(bed.ns.sites[0], "-6", "route", "show", `${VM.homeIpv6[0]}/128`), /encap/);
      watch.cancel();
      assert.is(events.length, 1, JSON.stringify(events));
      const [e] = events;
      assert.equal([e.fromSite, e.toSite, e.generation], ["s1", "s2", 2]);
      // The site reported when the VM attached, so the anchor measured a gap (not the -1 of unknown).
      assert.ok(e.gapMs >= 0, JSON.stringify(e));
      console.log(
        `handover event: gap ${e.gapMs.toFixed(1)} ms, anchor install ${e.installMs.toFixed(1)} ms`,
      );
      assert.ok(e.installMs >= 0 && e.installMs <= e.gapMs + 1, JSON.stringify(e));
      // /metrics: the anchor counted the accepted update and its gap, the new site its update.
      const m = await scrape(anchor.ready.metrics as string);
      assert.is(m.value("vmhop_netreach_binding_updates_total", { result: "accepted" }), 1);
      assert.is(m.value("vmhop_netreach_handover_gap_seconds_count"), 1);
      assert.ok(Math.abs(m.value("vmhop_netreach_handover_gap_seconds_sum")! - e.gapMs / 1000) < 1e-6);
      assert.is(m.value("vmhop_netreach_route_install_seconds_count"), 1);
      assert.is(m.value("vmhop_netreach_bindings", { state: "active" }), 1);
      const s2 = await scrape(sites[1].ready.metrics as string);
      assert.is(s2.value("vmhop_netreach_site_binding_updates_total", { result: "accepted" }), 1);
    },
  );

  t("a stale binding update or switch-over is refused and changes nothing", async () => {
    const before = await call(client, "listBindings", {});
    const routeBefore = await ip(bed.ns.anchor, "-6", "route", "show", `${VM.homeIpv6[0]}/128`);
    const probe = pingFromCn(bed, VM.homeIpv6[0], 60);
    await probe.ready;
    const stale = await call(client, "updateBinding", {
      vmId: VM.vmId,
      site: "s1",
      endpoint: { sid6: sidsOf(1).sid6, sid4: sidsOf(1).sid4 },
      generation: 1,
      lifetimeSeconds: 0,
      attachedUnixMs: 0,
    });
    assert.is(stale.accepted, false);
    assert.is(stale.status, BindingStatus.BINDING_STATUS_STALE_GENERATION);
    assert.is(stale.reason, "stale generation 1 (have 2)");
    assert.is(stale.binding?.site, "s2");
    const replay = await call(client, "switchOver", {
      vmId: VM.vmId,
      fromSite: "s2",
      toSite: "s1",
      port: "vport",
      mode: HandoverMode.HANDOVER_MODE_MBB_FP,
      generation: 2,
    });
    assert.is(replay.ack?.status, BindingStatus.BINDING_STATUS_STALE_GENERATION);
    assert.equal(await call(client, "listBindings", {}), before);
    assert.is(await ip(bed.ns.anchor, "-6", "route", "show", `${VM.homeIpv6[0]}/128`), routeBefore);
    assert.match(routeBefore, encapTo(dataplane, sidsOf(2).sid6));
    assert.is(summarisePings(await probe.result).lost, 0);
    const m = await scrape(anchor.ready.metrics as string);
    assert.ok((m.value("vmhop_netreach_binding_updates_total", { result: "refused" }) ?? 0) >= 1);
    assert.is(m.value("vmhop_netreach_binding_updates_total", { result: "accepted" }), 1);
  });

  t(
    "the anchor service process restarts: bindings come back, traffic keeps flowing, moves continue",
    async () => {
      const probes = pingHome(bed, 250);
      await Promise.all(probes.map((p) => p.ready));
      await sleep(300);
      assert.is(await anchor.stop(), 0, "graceful shutdown exits 0");
      await startAnchor(anchor.grpc);
      assert.is(anchor.ready.bindings, 1);
      assert.is(anchor.ready.store, "redis");
      for (const p of probes) {
        const s = summarisePings(await p.result);
        assert.is(s.lost, 0, JSON.stringify(s));
      }
      const { bindings } = await call(client, "listBindings", {});
      assert.equal(
        bindings.map((b) => [b.vmId, b.site, b.generation, b.endpoint?.sid4]),
        [[VM.vmId, "s2", 2, sidsOf(2).sid4]],
      );
      // The site directory came back from the store too: the new process drives the next move.
      await call(client, "prepareNetwork", {
        vmId: VM.vmId,
        toSite: "s1",
        port: "vport",
        mode: HandoverMode.HANDOVER_MODE_MBB_FP,
      });
      await bed.plug(0);
      const { ack } = await call(client, "switchOver", {
        vmId: VM.vmId,
        fromSite: "s2",
        toSite: "s1",
        port: "vport",
        mode: HandoverMode.HANDOVER_MODE_MBB_FP,
        generation: 3,
      });
      assert.ok(ack?.accepted, JSON.stringify(ack));
      await call(client, "cleanupNetwork", { vmId: VM.vmId, fromSite: "s2" });
      for (const a of [VM.homeIpv6[0], VM.homeIpv4[0]]) {
        const s = summarisePings(await pingFromCn(bed, a, 20).result);
        assert.is(s.lost, 0, `${a}: ${JSON.stringify(s)}`);
      }
    },
  );

  t(
    "CancelNetwork undoes a prepared bicast move: the VM stays bound and reachable where it was",
    async () => {
      const probes = pingHome(bed, 150);
      await Promise.all(probes.map((p) => p.ready));
      const prep = await call(client, "prepareNetwork", {
        vmId: VM.vmId,
        toSite: "s2",
        port: "vport",
        mode: HandoverMode.HANDOVER_MODE_MBB_BICAST,
      });
      assert.is(prep.binding?.movingTo, "s2");
      assert.match(await ip(bed.ns.sites[1], "-6", "route", "show", `${VM.homeIpv6[0]}/128`), /blackhole/);
      assert.is((await bed.bicastElements()).length, 2, "bicasting both families to s2");
      for (let i = 0; i < 2; i++) {
        // Twice: a rollback repeated after a restart finds nothing left to undo.
        const c = await call(client, "cancelNetwork", { vmId: VM.vmId, toSite: "s2" });
        assert.equal(
          [c.binding?.site, c.binding?.state, c.binding?.movingTo, c.binding?.generation],
          ["s1", BindingState.BINDING_STATE_ACTIVE, "", 3],
        );
      }
      assert.equal(await bed.bicastElements(), [], "the bicast stopped");
      for (const fam of ["-6", "-4"])
        assert.is(
          await ip(
            bed.ns.sites[1],
            fam,
            "route",
            "show",
            fam === "-6" ? `${VM.homeIpv6[0]}/128` : `${VM.homeIpv4[0]}/32`,
          ),
          "",
          "s2 forgot the VM",
        );
      for (const p of probes) assert.is(summarisePings(await p.result).lost, 0);
      // The switch-over happened (the VM is bound at s1): nothing there to cancel.
      await rejectsWithStatus(
        call(client, "cancelNetwork", { vmId: VM.vmId, toSite: "s1" }),
        grpc.status.FAILED_PRECONDITION,
        /bound at s1 \(generation 3\): the switch-over happened/,
      );
    },
  );

  t(
    "PlaceVm binds a VM at a site and the site keeps it alive; a retry is accepted, an older one refused",
    async () => {
      await call(client, "deregisterVm", { vmId: VM.vmId });
      const place = (generation: number) =>
        call(client, "placeVm", {
          vmId: VM.vmId,
          mac: VM.mac,
          homeIpv6: VM.homeIpv6,
          homeIpv4: VM.homeIpv4,
          site: "s1",
          port: "vport",
          generation,
          lifetimeSeconds: 3,
        });
      const first = await place(4);
      assert.is(first.ack?.status, BindingStatus.BINDING_STATUS_ACCEPTED, JSON.stringify(first.ack));
      assert.equal([first.ack?.binding?.site, first.ack?.binding?.generation], ["s1", 4]);
      for (const a of [VM.homeIpv6[0], VM.homeIpv4[0]])
        assert.is(summarisePings(await pingFromCn(bed, a, 20).result).received, 20, a);
      const retry = await place(4);
      assert.is(retry.ack?.accepted, true, JSON.stringify(retry.ack));
      const older = await place(3);
      assert.is(older.ack?.status, BindingStatus.BINDING_STATUS_STALE_GENERATION);
      // Twice the 3 s lifetime: only the site agent's refreshes keep the binding from expiring.
      const expires = first.ack!.binding!.expiresUnixMs;
      await sleep(6_000);
      const { bindings } = await call(client, "listBindings", {});
      assert.is(bindings[0]?.state, BindingState.BINDING_STATE_ACTIVE, JSON.stringify(bindings));
      assert.ok(bindings[0].expiresUnixMs > expires, "refreshed");
      await rejectsWithStatus(
        call(client, "placeVm", {
          vmId: "vm-2",
          mac: VM.mac,
          homeIpv6: [],
          homeIpv4: ["10.77.0.9"],
          site: "s9",
          port: "vport",
          generation: 1,
          lifetimeSeconds: 0,
        }),
        grpc.status.NOT_FOUND,
        /site 's9' has not registered/,
      );
    },
  );
});
