// Pure parts of netreach: kernel command builders, echo codec, ping analysis.
import * as assert from "uvu/assert";
import type { Binding } from "../../services/netreach/binding/types.js";
import {
  gratuitousArp,
  icmpv6Checksum,
  unsolicitedNa,
} from "../../services/netreach/dataplane/announce-frames.js";
import {
  anchorBindingCommands,
  bicastElements,
  bicastKeys,
  bicastRoutes,
  bicastTables,
  deleteHostRoutes,
  deliverHomeAddresses,
  holdHomeAddresses,
  reverseTunnelRules,
  STAGED_METRIC,
  tunnelRoutes,
  vmPortCommands,
} from "../../services/netreach/dataplane/commands.js";
import {
  chooseDataplane,
  DataplaneError,
  explainProbeFailure,
} from "../../services/netreach/dataplane/probe.js";
import { RawLink } from "../../services/netreach/dataplane/raw-link.js";
import { makeTunnel, setupTolerates } from "../../services/netreach/dataplane/tunnel.js";
import { summarisePings } from "../../services/netreach/probe/analysis.js";
import { decodeEchoReply, encodeEchoRequest, expandIPv6 } from "../../services/netreach/probe/icmp-socket.js";
import { checkPingOptions } from "../../services/netreach/probe/pinger.js";
import { gate } from "../helpers/env.js";
import { inheritedOf, openTargets } from "../helpers/fds.js";
import { test } from "../helpers/uvu.js";

const vm = { homeIpv6: ["2001:db8::100"], homeIpv4: ["10.0.0.100"] };
const site = { site: "s2", sid6: "fc00:2::d6", sid4: "fc00:2::d4" };
const srv6 = makeTunnel("srv6", { tunnelSource: "fc00:1::a", wanDev: "w0", decapDev: "w0" });
const vxlan = makeTunnel("vxlan", { tunnelSource: "fc00:1::a" });

test("tunnel routes: one atomic replace per home address, family SID each", () => {
  assert.equal(tunnelRoutes(vm, site, srv6), [
    "route replace 2001:db8::100/128 encap seg6 mode encap.red segs fc00:2::d6 dev w0",
    "route replace 10.0.0.100/32 encap seg6 mode encap.red segs fc00:2::d4 dev w0",
  ]);
  assert.equal(tunnelRoutes(vm, site, vxlan), [
    "route replace 2001:db8::100/128 encap ip6 id 4242 src fc00:1::a dst fc00:2::d6 csum dev nrvx0",
    "route replace 10.0.0.100/32 encap ip6 id 4242 src fc00:1::a dst fc00:2::d4 csum dev nrvx0",
  ]);
});

test("data plane set-up: srv6 decapsulates with seg6local, vxlan with one external GPE device", () => {
  assert.equal(srv6.setup(site), [
    "sr tunsrc set fc00:1::a",
    "route replace fc00:2::d6/128 encap seg6local action End.DT6 table main dev w0",
    "route replace fc00:2::d4/128 encap seg6local action End.DX4 nh4 0.0.0.0 dev w0",
  ]);
  assert.equal(vxlan.setup(site), [
    "link add nrvx0 type vxlan external gpe dstport 4790",
    "link set dev nrvx0 up",
    "addr replace fc00:2::d6/128 dev lo",
    "addr replace fc00:2::d4/128 dev lo",
  ]);
  assert.equal(vxlan.setup({ sid6: "fc00:2::a", sid4: "fc00:2::a" }).length, 3, "one address when equal");
  // A restarted node finds its device in place: kept (deleting it would cut live traffic).
  assert.ok(setupTolerates(vxlan.setup(site)[0], "RTNETLINK answers: File exists"));
  assert.not.ok(setupTolerates(vxlan.setup(site)[0], "RTNETLINK answers: Operation not supported"));
  assert.not.ok(setupTolerates(vxlan.setup(site)[2], "RTNETLINK answers: File exists"));
  assert.throws(() => makeTunnel("srv6", { tunnelSource: "fc00:1::a" }), /--wan-dev/);
});

test("data plane choice: asked-for if present, else one line naming the missing feature", () => {
  const none = { srv6: null, vxlan: null };
  const noSrv6 = {
    srv6: "the kernel has no SRv6 lightweight tunnels (CONFIG_IPV6_SEG6_LWTUNNEL)",
    vxlan: null,
  };
  assert.is(chooseDataplane("auto", none), "srv6");
  assert.is(chooseDataplane("auto", noSrv6), "vxlan");
  assert.is(chooseDataplane("vxlan", none), "vxlan");
  assert.throws(
    () => chooseDataplane("srv6", noSrv6),
    (e: Error) =>
      e instanceof DataplaneError &&
      e.message === `data plane srv6 is not available here: ${noSrv6.srv6}` &&
      !e.message.includes("\n"),
  );
  assert.throws(
    () => chooseDataplane("auto", { srv6: "a", vxlan: "b" }),
    /no netreach data plane works here: srv6: a; vxlan: b/,
  );
  assert.match(
    explainProbeFailure(
      "srv6",
      "route add fc00:ffff::1/128 encap seg6 mode encap.red segs fc00:ffff::2 dev lo",
      "Error: lwt encapsulation type not supported.",
    ),
    /CONFIG_IPV6_SEG6_LWTUNNEL/,
  );
  assert.match(
    explainProbeFailure(
      "vxlan",
      "link add nrprobe0 type vxlan external gpe dstport 4790",
      "Error: Unknown device type.",
    ),
    /CONFIG_VXLAN/,
  );
  assert.match(
    explainProbeFailure("vxlan", "(unshare)", "unshare: unshare failed: Operation not permitted"),
    /root/,
  );
});

test("staged forwarding pointer: its own metric, behind the port routes, deleted by metric", () => {
  assert.ok(STAGED_METRIC > 1024, "IPv6 port routes default to metric 1024 and must win");
  assert.equal(tunnelRoutes(vm, site, srv6, STAGED_METRIC), [
    `route replace 2001:db8::100/128 encap seg6 mode encap.red segs fc00:2::d6 dev w0 metric ${STAGED_METRIC}`,
    `route replace 10.0.0.100/32 encap seg6 mode encap.red segs fc00:2::d4 dev w0 metric ${STAGED_METRIC}`,
  ]);
  assert.equal(deleteHostRoutes(vm, STAGED_METRIC), [
    `route del 2001:db8::100/128 metric ${STAGED_METRIC}`,
    `route del 10.0.0.100/32 metric ${STAGED_METRIC}`,
  ]);
});

test("anchor binding: routes then proxy neighbours on the home link", () => {
  const b = { ...vm, ...site, vmId: "v", mac: "52:54:00:00:00:01" } as Binding;
  const cmds = anchorBindingCommands(b, "home0", srv6);
  assert.is(cmds.length, 4);
  assert.is(cmds[2], "neigh replace proxy 2001:db8::100 dev home0");
  assert.is(cmds[3], "neigh replace proxy 10.0.0.100 dev home0");
});

test("reverse-tunnel rules are split by family (IPv6 needs a -6 batch)", () => {
  const r = reverseTunnelRules(vm, 100, 100, "add");
  assert.equal(r.v6, ["rule add from 2001:db8::100/128 lookup 100 pref 100"]);
  assert.equal(r.v4, ["rule add from 10.0.0.100/32 lookup 100 pref 100"]);
});

test("the VM port imitates the home link gateway", () => {
  const cmds = vmPortCommands("vport", { gatewayMac: "02:00:00:00:00:01", gatewayIpv4: "10.0.0.1" });
  assert.ok(cmds.includes("link set dev vport address 02:00:00:00:00:01"));
  assert.ok(cmds.includes("addr replace fe80::1/64 dev vport"));
  assert.ok(cmds.includes("addr replace 10.0.0.1/32 dev vport"));
  assert.ok(cmds.includes("ntable change name arp_cache dev vport proxy_delay 0"));
  assert.ok(!cmds.some((c) => c.includes(vm.homeIpv6[0])), "home addresses are delivered only at attach");
});

test("home addresses are held (blackholed) at preparation and delivered at attach", () => {
  assert.equal(holdHomeAddresses(vm), [
    "route replace blackhole 2001:db8::100/128",
    "route replace blackhole 10.0.0.100/32",
  ]);
  assert.equal(deliverHomeAddresses(vm, "vport"), [
    "route replace 2001:db8::100/128 dev vport",
    "route replace 10.0.0.100/32 dev vport",
  ]);
});

test("bicast: key addresses per slot, routes to the destination, map elements per family", () => {
  assert.equal(bicastKeys(0), { key6: "fdff:bca::0", key4: "169.254.0.0" });
  assert.equal(bicastKeys(0x1a2), { key6: "fdff:bca::1a2", key4: "169.254.1.162" });
  assert.throws(() => bicastKeys(0x10000), /slot/);
  assert.throws(() => bicastKeys(-1), /slot/);
  assert.equal(bicastRoutes(3, { sid6: "fc00:2::d6", sid4: "fc00:2::d4" }, srv6), [
    "route replace fdff:bca::3/128 encap seg6 mode encap.red segs fc00:2::d6 dev w0",
    "route replace 169.254.0.3/32 encap seg6 mode encap.red segs fc00:2::d4 dev w0",
  ]);
  assert.equal(bicastElements(vm, 3, "add"), [
    "add element ip6 nr_bicast to { 2001:db8::100 : fdff:bca::3 }",
    "add element ip nr_bicast to { 10.0.0.100 : 169.254.0.3 }",
  ]);
  assert.equal(bicastElements(vm, 3, "delete"), [
    "delete element ip6 nr_bicast to { 2001:db8::100 }",
    "delete element ip nr_bicast to { 10.0.0.100 }",
  ]);
  const tables = bicastTables();
  assert.ok(tables.includes("add rule ip6 nr_bicast pre dup to ip6 daddr map @to"));
  assert.ok(tables.includes("add rule ip nr_bicast pre dup to ip daddr map @to"));
});

test("echo codec round trip and refusal of other ICMP types", () => {
  const req = encodeEchoRequest(true, 513, Buffer.from("hi"));
  assert.is(req[0], 128);
  assert.is(req.readUInt16BE(6), 513);
  const reply = Buffer.from(req);
  reply[0] = 129;
  assert.equal(decodeEchoReply(true, reply), { seq: 513, payload: Buffer.from("hi") });
  assert.is(decodeEchoReply(true, req), null);
  assert.is(decodeEchoReply(false, reply), null);
  const r4 = encodeEchoRequest(false, 1, Buffer.alloc(0));
  r4[0] = 0;
  assert.is(decodeEchoReply(false, r4)?.seq, 1);
  assert.throws(() => encodeEchoRequest(false, 70000, Buffer.alloc(0)), /out of range/);
});

test("IPv6 addresses expand to 16 bytes", () => {
  assert.is(expandIPv6("2001:db8::1").toString("hex"), "20010db8000000000000000000000001");
  assert.is(expandIPv6("::").toString("hex"), "0".repeat(32));
  assert.is(expandIPv6("fe80::1:2").toString("hex"), "fe800000000000000000000000010002");
  assert.throws(() => expandIPv6("10.0.0.1"), /not a plain IPv6/);
});

test("ping analysis: losses, longest loss run, largest gap", () => {
  const recs = Array.from({ length: 10 }, (_, i) => ({
    seq: i,
    sentAtMs: i * 10,
    recvAtMs: i === 4 || i === 5 ? undefined : i * 10 + 1,
  }));
  const s = summarisePings(recs);
  assert.is(s.sent, 10);
  assert.is(s.lost, 2);
  assert.is(s.longestLossRun, 2);
  // Two lost echoes 10 ms apart: 30 ms of silence, of which one spacing is the usual rhythm.
  assert.is(s.silenceMs, 30);
  assert.is(s.spacingMs, 10);
  assert.is(s.gapMs, 20);
  assert.is(s.gapStartMs, 31);
  assert.is(s.rttMedianMs, 1);
  assert.is(summarisePings([]).gapMs, 0);
  // Nothing lost, three echoes 15 ms late (a forwarding pointer's detour until the anchor
  // re-points): the gap is that delay.
  const delayed = recs.map((r) => ({ ...r, recvAtMs: r.sentAtMs + (r.seq >= 4 && r.seq <= 6 ? 16 : 1) }));
  assert.is(summarisePings(delayed).gapMs, 15);
});

test("gratuitous ARP: broadcast request with sender = target = the address", () => {
  const f = gratuitousArp("02:00:00:00:00:01", "10.0.0.100");
  assert.is(f.length, 42);
  assert.is(f.subarray(0, 6).toString("hex"), "ffffffffffff");
  assert.is(f.readUInt16BE(12), 0x0806);
  assert.is(f.readUInt16BE(20), 1);
  assert.is(f.subarray(22, 28).toString("hex"), "020000000001");
  assert.is(f.subarray(28, 32).toString("hex"), "0a000064");
  assert.is(f.subarray(38, 42).toString("hex"), "0a000064");
  assert.throws(() => gratuitousArp("02:00", "10.0.0.1"), /invalid MAC/);
});

test("unsolicited NA: all-nodes, hop limit 255, Override, target option, valid checksum", () => {
  const f = unsolicitedNa("02:00:00:00:00:01", "fe80::1", "2001:db8::100");
  assert.is(f.subarray(0, 6).toString("hex"), "333300000001");
  const ip6 = f.subarray(14, 54);
  const na = f.subarray(54);
  assert.is(ip6[7], 255);
  assert.is(na[0], 136);
  assert.is(na[4], 0x20);
  assert.is(na.subarray(8, 24).toString("hex"), "20010db8000000000000000000000100");
  assert.is(na.subarray(26, 32).toString("hex"), "020000000001");
  // Summing a message that carries its checksum gives zero (complemented: 0).
  assert.is(icmpv6Checksum(ip6.subarray(8, 24), ip6.subarray(24, 40), na), 0);
});

test("ping options are checked", () => {
  assert.throws(() => checkPingOptions({ target: "::1", count: 0, intervalMs: 10 }), /count/);
  assert.throws(() => checkPingOptions({ target: "::1", count: 5, intervalMs: 0 }), /interval/);
});

const asRoot = gate(test, ["root"], "packet sockets");

asRoot("raw link sockets are close-on-exec: the ip -batch helper we spawn does not inherit one", async () => {
  const before = openTargets();
  const link = new RawLink("lo");
  try {
    const mine = [...openTargets()].filter((t) => !before.has(t) && t.startsWith("socket:"));
    assert.is(mine.length, 1, "one new socket");
    assert.equal(await inheritedOf(mine), []);
  } finally {
    link.close();
  }
});

test.run();
