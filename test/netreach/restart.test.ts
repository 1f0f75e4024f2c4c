// The anchor restarts: bindings come back from Redis into the kernel and traffic keeps flowing.

import { setTimeout as sleep } from "node:timers/promises";
import * as assert from "uvu/assert";
import { RedisStore } from "../../services/common/store/index.js";
import { summarisePings } from "../../services/netreach/probe/analysis.js";
import { destroyStaleNetns, ip, uniqueNetnsPrefix } from "../../testbed/netns.js";
import { NetreachBed, sidsOf, VM } from "../../testbed/netreach/bed.js";
import { pingFromCn, pingHome } from "../../testbed/netreach/pings.js";
import { type RedisHandle, startRedis } from "../helpers/redis.js";
import { encapTo, perDataplane } from "./dataplanes.js";

// Unique per run: two runs at once (or another helper's tests) never share a namespace.
const PREFIX = uniqueNetnsPrefix("nr-rs-");
await perDataplane("netreach anchor restart", ["root", "ip", "redis-server"], (t, dataplane) => {
  let bed: NetreachBed;
  let redis: RedisHandle;
  /** The first store client: closed here even when the bed never came up (it would keep the process alive). */
  let kv: RedisStore | undefined;

  t.before(async () => {
    await destroyStaleNetns("nr-rs-");
    redis = await startRedis();
    kv = await RedisStore.connect(redis.url);
    bed = await NetreachBed.create({ dataplane, prefix: PREFIX, sites: 2, kv });
    assert.ok((await bed.place(0)).accepted);
    assert.ok((await bed.move(1, "mbb-fp")).outcome.accepted);
    await bed.settle();
  });

  t.after(async () => {
    await bed?.destroy();
    await bed?.kv.close().catch(() => undefined);
    if (kv !== bed?.kv) await kv?.close().catch(() => undefined);
    await redis?.stop();
  });

  const pingFrom = (target: string, count: number) => pingFromCn(bed, target, count);

  t("traffic keeps flowing while the anchor process restarts", async () => {
    const [p6, p4] = pingHome(bed, 200);
    await Promise.all([p6.ready, p4.ready]);
    await sleep(500);
    const old = bed.kv;
    await bed.restartAnchor(await RedisStore.connect(redis.url));
    await old.close();
    for (const p of [p6, p4]) {
      const s = summarisePings(await p.result);
      assert.is(s.lost, 0, JSON.stringify(s));
    }
    assert.is((await bed.anchor.cache.get(VM.vmId))?.site, "s2");
  });

  t("after Redis and the anchor restart on a wiped kernel, the bindings come back", async () => {
    await bed.anchor.stop();
    await bed.kv.close();
    // As if the anchor host rebooted: its routes and proxy entries are gone, and so is Redis.
    await ip(bed.ns.anchor, "-6", "route", "del", `${VM.homeIpv6[0]}/128`);
    await ip(bed.ns.anchor, "-4", "route", "del", `${VM.homeIpv4[0]}/32`);
    await ip(bed.ns.anchor, "-6", "neigh", "del", "proxy", VM.homeIpv6[0], "dev", "home0");
    await ip(bed.ns.anchor, "-4", "neigh", "del", "proxy", VM.homeIpv4[0], "dev", "home0");
    await ip(bed.ns.cn, "neigh", "flush", "all");
    const lost = summarisePings(await pingFrom(VM.homeIpv6[0], 5).result);
    assert.is(lost.received, 0, "with the routes wiped the VM is unreachable");
    await redis.restart();
    bed.kv = await RedisStore.connect(redis.url);
    await bed.startAnchor();
    const list = await bed.anchor.list();
    assert.equal(
      list.map((b) => [b.vmId, b.site, b.generation]),
      [[VM.vmId, "s2", bed.generation]],
    );
    assert.match(
      await ip(bed.ns.anchor, "-6", "route", "show", `${VM.homeIpv6[0]}/128`),
      encapTo(dataplane, sidsOf(2).sid6),
    );
    for (const a of [VM.homeIpv6[0], VM.homeIpv4[0]]) {
      const s = summarisePings(await pingFrom(a, 20).result);
      assert.is(s.lost, 0, `${a}: ${JSON.stringify(s)}`);
    }
    // And the restored anchor still refuses a stale update.
    const stale = await bed.anchor.updateBinding({ vmId: VM.vmId, ...bed.sites[0].endpoint, generation: 1 });
    assert.not.ok(stale.accepted);
  });
});
