// The real case: the test guest with a QEMU tap NIC at each site keeps its IPv6 and IPv4 home
// addresses across a real post-copy migration, while the correspondent pings it throughout.
// Two page-servers (PageHost, in-process); QEMU opens its tap in this namespace, then the tap moves into the site's namespace (a tap
// keeps working across a namespace move), so QEMU itself needs no namespace.
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import * as assert from "uvu/assert";
import { guestCmdline } from "../../deploy/guest/build/paths.js";
import { MigrationHooks, type MigrationNet } from "../../services/netreach/migration-hooks.js";
import { summarisePings } from "../../services/netreach/probe/analysis.js";
import { type MigrationRecord, PageHost } from "../../services/page-server/host.js";
import { isFinalPhase } from "../../services/page-server/migration/phase.js";
import type { VmSpec } from "../../services/page-server/vm/spec.js";
import type { VmState } from "../../services/page-server/vm/states.js";
import { destroyStaleNetns, uniqueNetnsPrefix } from "../../testbed/netns.js";
import { HOME, NetreachBed, VM } from "../../testbed/netreach/bed.js";
import { pingFromCn, pingHome } from "../../testbed/netreach/pings.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { ensureGuest } from "../page-server/guest.js";
import { perDataplane } from "./dataplanes.js";

// Unique per run: two runs at once (or another helper's tests) never share a namespace.
const PREFIX = uniqueNetnsPrefix("nr-q-");
// Taps start in the host's namespace: unique per run too (interface names: at most 15 chars).
const TAPS = ["s", "d"].map((end) => `nrq${process.pid.toString(36)}${end}`);
await perDataplane(
  "guest migration with netreach",
  ["root", "ip", "qemu-system-x86_64", "gcc", "apt-get"],
  (t, dataplane) => {
    const dir = tempDir("vmhop-nrq-");
    const hosts: PageHost[] = [];
    let bed: NetreachBed;

    /** `ip` in this (the host's) namespace, where QEMU opens its taps. */
    const hostIp = (...args: string[]) => promisify(execFile)("ip", args);

    async function dropTaps(): Promise<void> {
      for (const tap of TAPS) await hostIp("link", "del", tap).catch(() => undefined);
    }

    t.before(async () => {
      await destroyStaleNetns("nr-q-");
      await dropTaps();
      bed = await NetreachBed.create({ dataplane, prefix: PREFIX, sites: 2 });
    });

    t.after(async () => {
      for (const h of hosts) await h.close().catch(() => undefined);
      await bed?.destroy();
      await dropTaps();
      dir.cleanup();
    });

    /** The guest's spec at a site: its NIC is a tap of that site (created here, moved there later). */
    async function specAt(site: number): Promise<VmSpec> {
      const guest = await ensureGuest();
      const tap = TAPS[site];
      await hostIp("tuntap", "add", "dev", tap, "mode", "tap");
      return {
        name: "nrq-vm",
        vcpus: 1,
        memoryMib: 160,
        kernel: guest.kernel,
        initrd: guest.initrd,
        cmdline: guestCmdline(
          { memMib: 32, rateMib: 8, verifyMib: 32 },
          `vmhop.ip6=${VM.homeIpv6[0]} vmhop.ip4=${VM.homeIpv4[0]}/24 vmhop.gw4=${HOME.gw4}`,
        ),
        nic: { tap, mac: VM.mac },
      };
    }

    /** QEMU has opened its tap: the tap goes into the site's namespace (it keeps working there). */
    const moveTap = (site: number) => hostIp("link", "set", "dev", TAPS[site], "netns", bed.ns.sites[site]);

    const ping = (target: string, count: number) => pingFromCn(bed, target, count);

    async function waitReachable(target: string): Promise<void> {
      for (let i = 0; i < 60; i++) {
        if (summarisePings(await ping(target, 5).result).received > 0) return;
      }
      throw new Error(`${target} never answered`);
    }

    t(
      "the guest keeps its home addresses across a post-copy migration between page-servers at two sites",
      async () => {
        // One page-server per site, as `vmhop page serve` runs them.
        for (const site of ["s1", "s2"]) {
          const h = new PageHost({ runRoot: join(dir.path, site) });
          await h.open();
          hosts.push(h);
        }
        const [a, b] = hosts;
        a.define(await specAt(0));
        const src = await a.start("nrq-vm");
        await moveTap(0);
        const s1 = bed.sites[0];
        await s1.attachPort(VM, TAPS[0]);
        const reg = await bed.anchor.register({ ...VM, ...s1.endpoint, generation: 1, lifetimeSeconds: 300 });
        assert.ok(reg.accepted);
        await src.serial.waitForHeartbeat((h) => h.passes >= 1, 90_000);
        for (const addr of [VM.homeIpv6[0], VM.homeIpv4[0]]) await waitReachable(addr);

        const channel = await b.prepareIncoming(await specAt(1), "nrq-m1", { mode: "postcopy" });
        await moveTap(1);
        const dst = b.get("nrq-vm");
        dst.serial.continueFrom(src.serial);
        const m: MigrationNet = { vm: VM, from: s1, to: bed.sites[1], port: TAPS[1], mode: "mbb-bicast" };
        const hooks = new MigrationHooks(bed.anchor);
        await hooks.prepareNetwork(m);

        const probes = pingHome(bed, 800);
        await Promise.all(probes.map((p) => p.ready));
        await new Promise((r) => setTimeout(r, 1000));
        // Switch the network over the moment the guest runs at the destination.
        const running = new Promise<void>((resolve) => {
          const on = (to: VmState) => {
            if (to !== "running") return;
            dst.off("state", on);
            resolve();
          };
          dst.on("state", on);
        });
        const rec = await a.startMigration({
          vmId: "nrq-vm",
          migrationId: "nrq-m1",
          channelAddress: channel,
          mode: "postcopy",
        });
        const done = new Promise<MigrationRecord>((resolve) => {
          const on = (r: MigrationRecord) => {
            if (isFinalPhase(r.phase)) resolve(r);
          };
          rec.events.on("update", on);
          on(rec);
        });
        await running;
        const outcome = await hooks.switchOver(m, 2);
        assert.ok(outcome.accepted, JSON.stringify(outcome));
        const final = await done;
        assert.is(final.phase, "completed", final.error);
        const [v6, v4] = await Promise.all(probes.map(async (p) => summarisePings(await p.result)));
        console.log(
          `guest migration s1 -> s2: post-copy wall ${final.wallMs} ms; ` +
            `IPv6 gap ${v6.gapMs.toFixed(0)} ms, lost ${v6.lost}/${v6.sent}; IPv4 gap ${v4.gapMs.toFixed(0)} ms, lost ${v4.lost}/${v4.sent}`,
        );
        // Bounded loss: the guest itself stalls while post-copy faults its pages in.
        for (const [fam, s] of [
          ["IPv6", v6],
          ["IPv4", v4],
        ] as const) {
          assert.ok(s.received > s.sent / 2, `${fam}: ${JSON.stringify(s)}`);
          assert.ok(s.lost <= 150, `${fam}: ${JSON.stringify(s)}`);
        }
        await hooks.cleanup(m);
        // Steady state at the destination: the same addresses answer, nothing lost.
        for (const addr of [VM.homeIpv6[0], VM.homeIpv4[0]]) {
          const s = summarisePings(await ping(addr, 30).result);
          assert.is(s.lost, 0, `${addr}: ${JSON.stringify(s)}`);
        }
        assert.is((await bed.anchor.cache.get(VM.vmId))?.site, "s2");
        const hb = await dst.serial.waitForHeartbeat((h) => h.passes >= 1, 60_000);
        assert.is(hb.memErrors, 0);
      },
    );
  },
);
