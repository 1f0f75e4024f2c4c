// The WAN byte meter of the sites bed: /proc/net/dev parsed, only WAN links (`w<k>`) summed,
// and a real count of traffic sent between two namespaces over such a link.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import * as assert from "uvu/assert";
import {
  addAddress,
  createNetns,
  createVeth,
  destroyNetnsWithPrefix,
  hostSysctls,
  runIn,
  uniqueNetnsPrefix,
} from "../../testbed/netns.js";
import { isWanDevice, parseNetDev, WanMeter, wanTxBytes } from "../../testbed/sites/wan-bytes.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";

const SAMPLE = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 1000 10    0    0    0     0          0         0 1000 10    0    0    0     0       0          0
    ul: 900000 600    0    0    0     0          0         0 800000 500    0    0    0     0       0          0
    w0:   5000 40    0    0    0     0          0         0    7000 50    0    0    0     0       0          0
    w2: 123456789012 9    0    0    0     0          0         0 987654321098 8    0    0    0     0       0          0
 vh-vm1: 1 1    0    0    0     0          0         0 2 2    0    0    0     0       0          0
`;

test("parseNetDev: receive and transmit bytes per device, headers skipped", () => {
  const d = parseNetDev(SAMPLE);
  assert.equal([...d.keys()], ["lo", "ul", "w0", "w2", "vh-vm1"]);
  assert.equal(d.get("w2"), { rxBytes: 123456789012, txBytes: 987654321098 });
  assert.equal(d.get("vh-vm1"), { rxBytes: 1, txBytes: 2 });
});

test("parseNetDev: a malformed line is an error, not a zero", () => {
  assert.throws(() => parseNetDev("  w1: 12 x 0\n"), /not a \/proc\/net\/dev line/);
  assert.throws(() => parseNetDev(`  w1: ${"1 ".repeat(15)}\n`), /w1/);
});

test("wanTxBytes: only the WAN links count (not the underlay, loopback or taps)", () => {
  assert.is(wanTxBytes(parseNetDev(SAMPLE)), 7000 + 987654321098);
  assert.ok(isWanDevice("w0") && isWanDevice("w12"));
  for (const n of ["ul", "lo", "wlan0", "w", "vh-vm1", "w1x"]) assert.not.ok(isWanDevice(n), n);
});

const t = gate(test, ["root", "ip", "ping", "sleep"], "WAN meter in namespaces");

t("WanMeter: counts what a namespace sends on its WAN link, read through a process there", async () => {
  const prefix = uniqueNetnsPrefix("nr-wanb-");
  const [a, b] = [`${prefix}a`, `${prefix}b`];
  let holder: ReturnType<typeof spawn> | undefined;
  try {
    for (const ns of [a, b]) await createNetns(ns, { sysctls: hostSysctls });
    await createVeth({ ns: a, name: "w1" }, { ns: b, name: "w2" });
    await addAddress(a, "w1", "10.99.0.1/24");
    await addAddress(b, "w2", "10.99.0.2/24");
    holder = spawn("ip", ["netns", "exec", a, "sleep", "60"], { stdio: "ignore" });
    const meter = new WanMeter([holder.pid!]);
    // The counters are the namespace's once `ip netns exec` has entered it (then w1 shows).
    const inside = () => {
      try {
        return parseNetDev(readFileSync(`/proc/${holder!.pid}/net/dev`, "utf8")).has("w1");
      } catch {
        return false;
      }
    };
    for (let i = 0; i < 100 && !inside(); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(inside(), "the holder process entered the namespace");
    const before = meter.read();
    await runIn(a, "ping", ["-q", "-c", "20", "-i", "0.01", "-s", "1000", "10.99.0.2"]);
    const sent = meter.read() - before;
    // 20 echo requests of 1000 bytes of payload each, plus headers; and at most a few more frames.
    assert.ok(sent >= 20 * 1028 && sent < 20 * 1100 + 2000, `counted ${sent} bytes`);
  } finally {
    holder?.kill("SIGKILL");
    await destroyNetnsWithPrefix(prefix);
  }
});

test.run();
