// Namespace test-bed helpers and the persistent ip -batch process, on the real kernel.
import * as assert from "uvu/assert";
import { idempotent } from "../../services/netreach/dataplane/batch-process.js";
import { IpBatch } from "../../services/netreach/dataplane/ip-batch.js";
import {
  addAddress,
  createNetns,
  createVeth,
  destroyNetnsWithPrefix,
  destroyStaleNetns,
  ip,
  listNetns,
  macOf,
  runIn,
  setRateLimit,
  uniqueNetnsPrefix,
} from "../../testbed/netns.js";
import { rejects } from "../helpers/assert.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";

const BASE = "nr-ns-";
const P = uniqueNetnsPrefix(BASE);
const t = gate(test, ["root", "ip", "tc"], "namespace helpers");

t.before(() => destroyStaleNetns(BASE));
t.after(() => destroyNetnsWithPrefix(P));

t("namespaces, veth, addresses, sysctls and tbf", async () => {
  await createNetns(`${P}a`, { sysctls: { "net.ipv6.conf.all.forwarding": "1" } });
  await createNetns(`${P}b`);
  assert.equal((await listNetns(P)).sort(), [`${P}a`, `${P}b`]);
  await createVeth({ ns: `${P}a`, name: "x0", mac: "02:00:00:00:aa:01" }, { ns: `${P}b`, name: "y0" });
  await addAddress(`${P}a`, "x0", "fd99::1/64");
  assert.is(await macOf(`${P}a`, "x0"), "02:00:00:00:aa:01");
  assert.is((await runIn(`${P}a`, "sysctl", ["-n", "net.ipv6.conf.all.forwarding"])).trim(), "1");
  await setRateLimit(`${P}a`, "x0", { rateBitsPerSecond: 10_000_000 });
  assert.match(await runIn(`${P}a`, "tc", ["qdisc", "show", "dev", "x0"]), /tbf .*rate 10Mbit/);
  assert.match(await ip(`${P}a`, "addr", "show", "dev", "x0"), /fd99::1\/64/);
});

t("unique prefixes; stale cleanup takes only namespaces of processes that are gone", async () => {
  const other = uniqueNetnsPrefix(BASE);
  assert.ok(other.startsWith(`${BASE}${process.pid}-`) && other !== P);
  // pid_max is at most 2^22: this pid never runs.
  const dead = `${BASE}99999999-zz-x`;
  await createNetns(dead);
  await createNetns(`${P}live`);
  await destroyStaleNetns(BASE);
  const left = await listNetns(BASE);
  assert.ok(!left.includes(dead), "a dead run's namespace is removed");
  assert.ok(left.includes(`${P}live`), "a live run's namespace stays");
  await destroyNetnsWithPrefix(`${P}live`);
  assert.throws(() => uniqueNetnsPrefix("Bad Base"), /invalid namespace prefix/);
});

t("bad input gets clear errors", async () => {
  await rejects(() => createNetns("bad name"), /invalid namespace name/);
  await rejects(
    () => createVeth({ ns: `${P}a`, name: "much-too-long-name" }, { ns: `${P}b`, name: "y1" }),
    /invalid interface name/,
  );
  await rejects(
    () => createVeth({ ns: `${P}a`, name: "x1", mac: "nope" }, { ns: `${P}b`, name: "y1" }),
    /invalid MAC/,
  );
  await rejects(() => addAddress(`${P}a`, "x0", "fd99::1"), /want ADDR\/LEN/);
  await rejects(() => setRateLimit(`${P}a`, "x0", { rateBitsPerSecond: 0 }), /rate must be > 0/);
  await rejects(() => createNetns(`${P}a`), /File exists|exists/);
  await rejects(() => destroyNetnsWithPrefix("nr"), /too broad/);
});

t("ip -batch: commands run in order, failures name their command, the process survives", async () => {
  const b = new IpBatch(`${P}a`);
  try {
    await b.apply(["route replace fd98::/64 dev x0", "route replace 10.9.0.0/24 dev x0"]);
    assert.match(await ip(`${P}a`, "-6", "route", "show", "fd98::/64"), /dev x0/);
    await rejects(
      () => b.apply(["route replace fd97::/64 dev nosuchdev", "route del fd98::/64"]),
      /'route replace fd97::\/64 dev nosuchdev'/,
    );
    // The second command still ran (-force), and the batch keeps working.
    assert.is((await ip(`${P}a`, "-6", "route", "show", "fd98::/64")).trim(), "");
    await b.apply(["route del fd98::/64"], { tolerate: idempotent });
    await rejects(
      () => b.apply(["route add 10.1.0.0/24 dev x0\nroute del 10.9.0.0/24"]),
      /ip -batch in .*: invalid command/,
    );
  } finally {
    await b.close();
  }
  await rejects(() => b.apply(["route show"]), /exited/);
});

t.run();
