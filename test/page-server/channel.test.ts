// The migration channel between page-servers: hello codec, refusals, and a real post-copy
// migration carried source QEMU → unix socket → TCP → unix socket → destination QEMU.
import { once } from "node:events";
import { connect, createServer } from "node:net";
import { join } from "node:path";
import * as assert from "uvu/assert";
import {
  ChannelProtocolError,
  decodeHello,
  decodePing,
  decodeProbeStep,
  decodeReply,
  encodeHello,
  encodePing,
  encodeReply,
  ReplyStatus,
} from "../../services/page-server/channel/hello.js";
import { ChannelServer } from "../../services/page-server/channel/inbound.js";
import { ChannelError, ChannelOut, splitHostPort } from "../../services/page-server/channel/outbound.js";
import { migrate, prepareIncoming } from "../../services/page-server/migration/driver.js";
import type { Vm } from "../../services/page-server/vm/vm.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import { bootPair } from "./pair.js";

const migTest = gate(test, ["qemu-system-x86_64", "gcc", "apt-get", "root"], "migration through the channel");
const dir = tempDir("vmhop-chan-");
const vms: Vm[] = [];
const closers: (() => Promise<void>)[] = [];

test.after.each(async () => {
  for (const vm of vms.splice(0)) await vm.kill();
  for (const c of closers.splice(0)) await c();
});
test.after(() => dir.cleanup());

test("hello and reply round-trip, byte by byte, with trailing stream bytes left alone", () => {
  const wire = Buffer.concat([encodeHello("mig-42"), Buffer.from("QEVM")]);
  for (let i = 0; i < 14; i++) assert.is(decodeHello(wire.subarray(0, i)), null, `prefix ${i}`);
  assert.equal(decodeHello(wire), {
    migrationId: "mig-42",
    recover: false,
    compress: false,
    handoff: false,
    probe: false,
    preempt: false,
    lane: false,
    used: 14,
  });
  assert.equal(decodeHello(encodeHello("m", { recover: true })), {
    migrationId: "m",
    recover: true,
    compress: false,
    handoff: false,
    probe: false,
    preempt: false,
    lane: false,
    used: 9,
  });
  assert.equal(decodeHello(encodeHello("m", { compress: true }))?.compress, true);
  assert.equal(decodeHello(encodeHello("m", { handoff: true }))?.handoff, true);
  assert.equal(decodeHello(encodeHello("m", { preempt: true }))?.preempt, true);
  assert.equal(decodeHello(encodeHello("m", { probe: true }))?.probe, true);
  assert.equal(decodeHello(encodeHello("m", { preempt: true, lane: true }))?.lane, true);
  const r = Buffer.concat([encodeReply(ReplyStatus.UnknownMigration, "no such"), Buffer.from([1, 2])]);
  assert.is(decodeReply(r.subarray(0, 5)), null);
  assert.equal(decodeReply(r), { status: ReplyStatus.UnknownMigration, message: "no such", used: 10 });
});

test("bad hellos are rejected clearly", () => {
  assert.throws(
    () => decodeHello(Buffer.from("GET / HTTP/1.1")),
    (e: unknown) => e instanceof ChannelProtocolError,
  );
  const v2 = encodeHello("x");
  v2[4] = 2;
  assert.throws(() => decodeHello(v2), /version 2/);
  const flags = encodeHello("x");
  flags[5] = 0x80;
  assert.throws(() => decodeHello(flags), /unknown channel flags/);
  assert.throws(() => encodeHello(""), /1-256 bytes/);
  assert.throws(
    () => decodeHello(encodeHello("x", { probe: true, handoff: true })),
    /probe hello carries no other/,
  );
  // The urgent lane is a fresh relayed preempt stream's second connection, nothing else.
  for (const other of [{}, { preempt: true, recover: true }, { preempt: true, handoff: true }])
    assert.throws(() => decodeHello(encodeHello("x", { lane: true, ...other })), /lane hello/);
  assert.throws(() => decodeReply(Buffer.from([9, 0, 0])), /status 9/);
  assert.equal(splitHostPort("[::1]:7000"), ["::1", 7000]);
  assert.throws(() => splitHostPort("nohost"), /host:port/);
});

test("probe: pings and the real hello after it decode byte by byte", () => {
  const ping = encodePing(7);
  assert.is(ping.length, 8);
  for (let i = 0; i < 8; i++) assert.is(decodeProbeStep(ping.subarray(0, i)), null, `prefix ${i}`);
  assert.equal(decodeProbeStep(Buffer.concat([ping, Buffer.from("x")])), { kind: "ping", seq: 7, used: 8 });
  assert.equal(decodePing(ping), { seq: 7, used: 8 });
  const hello = encodeHello("m", { preempt: true });
  assert.equal(decodeProbeStep(hello), {
    kind: "hello",
    migrationId: "m",
    recover: false,
    compress: false,
    handoff: false,
    probe: false,
    preempt: true,
    lane: false,
    used: 9,
  });
  assert.throws(() => decodeProbeStep(encodeHello("m", { probe: true })), /second probe/);
  assert.throws(() => decodeProbeStep(Buffer.from("GARBAGE!")), /not a vmhop channel hello/);
  assert.throws(() => decodePing(Buffer.from("VMHC0000")), /expected a channel ping/);
});

test("the server echoes a probe's pings, then answers the real hello on the same connection", async () => {
  const server = new ChannelServer();
  const addr = await server.listen();
  closers.push(() => server.close());
  const [host, port] = splitHostPort(addr);
  server.expect("probed", join(dir.path, "absent.sock"));
  const c = connect(port, host);
  const chunks: Buffer[] = [];
  c.on("data", (d: Buffer) => chunks.push(d));
  const pings = Buffer.concat([encodePing(1), encodePing(2)]);
  // The real hello asks for a relay into QEMU's socket, which is absent: refused, clearly.
  c.write(Buffer.concat([encodeHello("probed", { probe: true }), pings, encodeHello("probed")]));
  await once(c, "close");
  const got = Buffer.concat(chunks);
  const ok = decodeReply(got);
  assert.is(ok?.status, ReplyStatus.Ok);
  assert.ok(got.subarray(ok!.used, ok!.used + 16).equals(pings), "pongs echo the pings");
  const last = decodeReply(got.subarray(ok!.used + 16));
  assert.is(last?.status, ReplyStatus.UnknownMigration);
  assert.match(last?.message ?? "", /not listening/);

  // A probe for an unknown migration is refused at once; a hello for another id after a probe is bad.
  for (const [bytes, status, message] of [
    [encodeHello("nope", { probe: true }), ReplyStatus.UnknownMigration, /no incoming migration nope/],
    [
      Buffer.concat([encodeHello("probed", { probe: true }), encodeHello("other")]),
      ReplyStatus.BadHello,
      /followed by a hello for other/,
    ],
  ] as const) {
    const d = connect(port, host);
    const got2: Buffer[] = [];
    d.on("data", (b: Buffer) => got2.push(b));
    d.write(bytes);
    await once(d, "close");
    let all = Buffer.concat(got2);
    let reply = decodeReply(all);
    if (reply?.status === ReplyStatus.Ok) {
      all = all.subarray(reply.used);
      reply = decodeReply(all);
    }
    assert.is(reply?.status, status);
    assert.match(reply?.message ?? "", message);
  }
});

test("an urgent lane that arrives first is joined to QEMU only after the main stream", async () => {
  const server = new ChannelServer();
  const addr = await server.listen();
  closers.push(() => server.close());
  const [host, port] = splitHostPort(addr);
  // A stand-in for the destination QEMU's incoming socket: it names each connection by its
  // first bytes (what the source relays after the reply), in the order QEMU accepts them.
  const sock = join(dir.path, "lane-order.sock");
  const accepted: string[] = [];
  const qemu = createServer((c) => c.once("data", (d: Buffer) => accepted.push(d.toString())));
  await new Promise<void>((r) => qemu.listen(sock, r));
  closers.push(() => new Promise<void>((r) => qemu.close(() => r())));
  server.expect("m-lane", sock);
  const dial = async (hello: Buffer, name: string) => {
    const c = connect(port, host);
    c.write(hello);
    const [reply] = (await once(c, "data")) as [Buffer];
    assert.is(decodeReply(reply)?.status, ReplyStatus.Ok, name);
    c.write(name);
    return c;
  };
  const lane = dial(encodeHello("m-lane", { preempt: true, lane: true }), "lane");
  let laneAnswered = false;
  void lane.then(() => {
    laneAnswered = true;
  });
  await new Promise((r) => setTimeout(r, 200));
  assert.not.ok(laneAnswered, "the lane waits for its main stream");
  assert.equal(accepted, []);
  const main = await dial(encodeHello("m-lane", { preempt: true }), "main");
  const l = await lane;
  await until("both at the stand-in QEMU", () => (accepted.length === 2 ? true : undefined), 5000);
  assert.equal(accepted, ["main", "lane"]);
  main.destroy();
  l.destroy();
});

test("the server refuses an unknown migration and garbage", async () => {
  const server = new ChannelServer();
  const addr = await server.listen();
  closers.push(() => server.close());
  const [host, port] = splitHostPort(addr);
  server.expect("no-recovery", join(dir.path, "absent.sock"));
  for (const [hello, status] of [
    [encodeHello("nope"), ReplyStatus.UnknownMigration],
    [encodeHello("no-recovery", { recover: true }), ReplyStatus.RecoverFailed],
    [Buffer.from("hello there\n"), ReplyStatus.BadHello],
  ] as const) {
    const c = connect(port, host);
    c.write(hello);
    const chunks: Buffer[] = [];
    c.on("data", (d: Buffer) => chunks.push(d));
    await once(c, "close");
    const reply = decodeReply(Buffer.concat(chunks));
    assert.is(reply?.status, status);
    assert.ok((reply?.message.length ?? 0) > 0);
  }
});

for (const [preempt, compress] of [
  [false, false],
  [true, false],
  [false, true],
]) {
  migTest(
    `post-copy${preempt ? " with preempt" : ""}${compress ? " compressed" : ""} through the channel: heartbeat unbroken`,
    async () => {
      const tag = preempt ? "pe" : compress ? "cz" : "ch";
      const { src, dst } = await bootPair(dir.path, tag, { memMib: 48, rateMib: 16, verifyMib: 48 }, vms);
      const server = new ChannelServer();
      const addr = await server.listen();
      closers.push(() => server.close());
      const incoming = join(dir.path, `${tag}-incoming.sock`);
      const target = server.expect("m1", incoming);
      await prepareIncoming(dst, `unix:${incoming}`, { mode: "postcopy", preempt });
      const out = new ChannelOut({
        migrationId: "m1",
        peer: addr,
        socketPath: join(dir.path, `${tag}-out.sock`),
        compression: compress ? "on" : "off",
      });
      await out.open();
      closers.push(() => out.close());

      const before = src.serial.tracker.stats.last!;
      const r = await migrate(src, out.qemuUri, { mode: "postcopy", preempt });
      assert.is(r.final.status, "completed");
      const hb = await dst.serial.waitForHeartbeat((h) => h.passes >= before.passes + 2, 60_000);
      assert.is(hb.memErrors, 0);
      assert.is(dst.serial.tracker.stats.counterBreaks, 0);
      // The preempt lane is a second QEMU connection, carried on its own TCP connection.
      assert.is(out.connections, preempt ? 2 : 1);
      assert.is(target.connections, out.connections);
      assert.ok(out.counters.forward >= r.final.bytesTransferred, "channel carried less than QEMU sent");
      assert.ok(out.counters.backward > 0, "no return-path bytes (post-copy page requests)");
      assert.is(target.counters.forward, out.counters.forward);
      assert.is(target.counters.wireForward, out.counters.wireForward);
      const ratio = out.counters.wireForward / out.counters.forward;
      if (compress) assert.ok(ratio < 0.8, `compression saved little: ratio ${ratio.toFixed(2)}`);
      else assert.is(out.counters.wireForward, out.counters.forward);
      console.log(
        `channel post-copy${preempt ? "+preempt" : ""}${compress ? "+compress" : ""}: wall ${r.wallMs} ms, ` +
          `${out.counters.forward} B out (${out.counters.wireForward} on the wire), ` +
          `${out.counters.backward} B back, fault requests ${r.final.postcopyRequests}, ` +
          `max heartbeat gap ${dst.serial.tracker.stats.maxGapMs} ms`,
      );
      await src.stop();
      assert.is(src.state, "stopped");
    },
  );
}

test("a channel the destination refuses fails at open, before QEMU is told to migrate", async () => {
  const server = new ChannelServer();
  const addr = await server.listen();
  closers.push(() => server.close());
  const out = new ChannelOut({
    migrationId: "never-prepared",
    peer: addr,
    socketPath: join(dir.path, "rf-out.sock"),
  });
  closers.push(() => out.close());
  try {
    await out.open();
    assert.unreachable("opened a refused channel");
  } catch (err) {
    assert.instance(err, ChannelError);
    assert.match((err as Error).message, /UnknownMigration: no incoming migration never-prepared/);
  }
  const closed = new ChannelOut({
    migrationId: "m",
    peer: "127.0.0.1:1",
    socketPath: join(dir.path, "rf2.sock"),
  });
  try {
    await closed.open();
    assert.unreachable("opened a channel to a closed port");
  } catch (err) {
    assert.instance(err, ChannelError);
    assert.match((err as Error).message, /ECONNREFUSED/);
  }
});

test.run();
