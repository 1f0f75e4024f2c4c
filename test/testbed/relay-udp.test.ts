import { createSocket, type Socket } from "node:dgram";
import { once } from "node:events";
import { performance } from "node:perf_hooks";
import * as assert from "uvu/assert";
import { startUdpRelay } from "../../testbed/relay.js";
import { test } from "../helpers/uvu.js";

async function udp(onMessage?: (s: Socket, m: Buffer, port: number, host: string) => void): Promise<Socket> {
  const s = createSocket("udp4");
  if (onMessage) s.on("message", (m, r) => onMessage(s, m, r.port, r.address));
  s.bind(0, "127.0.0.1");
  await once(s, "listening");
  return s;
}

const portOf = (s: Socket) => s.address().port;

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

test("datagrams are delayed each way and delivered; the first sender is learned as peer", async () => {
  const delayMs = 15;
  const echo = await udp((s, m, port, host) => s.send(m, port, host));
  const relay = await startUdpRelay({
    target: `127.0.0.1:${portOf(echo)}`,
    delayMs,
    rateBitsPerSecond: 100e6,
  });
  const client = await udp();
  try {
    for (let i = 0; i < 5; i++) {
      const msg = Buffer.from(`ping ${i}`);
      const t0 = performance.now();
      client.send(msg, relay.port, "127.0.0.1");
      const [got] = (await once(client, "message")) as [Buffer];
      const rtt = performance.now() - t0;
      assert.is(got.toString(), `ping ${i}`);
      assert.ok(rtt >= 2 * delayMs, `rtt ${rtt}`);
    }
    assert.is(relay.peer(), `127.0.0.1:${portOf(client)}`);
    assert.is(relay.stats.toTarget, 5);
    assert.is(relay.stats.toPeer, 5);
  } finally {
    client.close();
    echo.close();
    await relay.close();
  }
});

test("rate cap: N bytes at rate R arrive no sooner than N/R; a full queue drops", async () => {
  const got: number[] = [];
  const sink = await udp((_s, m) => got.push(m.length));
  const rate = 1e6;
  const relay = await startUdpRelay({
    target: `127.0.0.1:${portOf(sink)}`,
    delayMs: 0,
    rateBitsPerSecond: rate,
  });
  const client = await udp();
  try {
    const n = 20;
    const t0 = performance.now();
    for (let i = 0; i < n; i++) client.send(Buffer.alloc(1250), relay.port, "127.0.0.1");
    await until(() => got.length === n);
    assert.ok(performance.now() - t0 >= ((n * 1250 * 8) / rate) * 1000);
  } finally {
    await relay.close();
  }
  const small = await startUdpRelay({
    target: `127.0.0.1:${portOf(sink)}`,
    delayMs: 50,
    rateBitsPerSecond: 80e3,
    queueBytes: 2000,
  });
  try {
    for (let i = 0; i < 10; i++) client.send(Buffer.alloc(1000), small.port, "127.0.0.1");
    await until(() => small.stats.dropped + small.stats.toTarget === 10 || small.stats.dropped >= 8);
    assert.ok(small.stats.dropped >= 8, `dropped ${small.stats.dropped}`);
  } finally {
    client.close();
    sink.close();
    await small.close();
  }
});

test("loss 1 loses everything; a configured peer ignores strays", async () => {
  const got: Buffer[] = [];
  const sink = await udp((_s, m) => got.push(m));
  const client = await udp();
  const lossy = await startUdpRelay({ target: `127.0.0.1:${portOf(sink)}`, delayMs: 1, loss: 1 });
  const pinned = await startUdpRelay({
    target: `127.0.0.1:${portOf(sink)}`,
    delayMs: 1,
    peerA: "127.0.0.2:9",
  });
  try {
    for (let i = 0; i < 3; i++) client.send(Buffer.from("x"), lossy.port, "127.0.0.1");
    client.send(Buffer.from("y"), pinned.port, "127.0.0.1");
    await until(() => lossy.stats.lost === 3 && pinned.stats.strays === 1);
    assert.is(lossy.stats.toTarget, 0);
    assert.is(pinned.stats.toTarget, 0);
    assert.is(pinned.peer(), "127.0.0.2:9");
  } finally {
    client.close();
    sink.close();
    await lossy.close();
    await pinned.close();
  }
});

test("bad arguments give clear errors", async () => {
  const cases: [Parameters<typeof startUdpRelay>[0], RegExp][] = [
    [{ target: "unix:/tmp/x", delayMs: 1 }, /UDP needs HOST:PORT/],
    [{ target: "127.0.0.1:9", delayMs: -3 }, /delay must be/],
    [{ target: "127.0.0.1:9", delayMs: 1, loss: 2 }, /loss must be a probability/],
    [{ target: "127.0.0.1:9", delayMs: 1, jitterMs: Number.NaN }, /jitter/],
    [{ target: "127.0.0.1", delayMs: 1 }, /bad target address/],
  ];
  for (const [opts, re] of cases) {
    try {
      const r = await startUdpRelay(opts);
      await r.close();
      assert.unreachable(`accepted ${JSON.stringify(opts)}`);
    } catch (err) {
      assert.match((err as Error).message, re);
    }
  }
});

test("a cut link drops every datagram both ways, in flight too; restored, it carries again", async () => {
  const echo = await udp((s, m, port, host) => s.send(m, port, host));
  const relay = await startUdpRelay({ target: `127.0.0.1:${portOf(echo)}`, delayMs: 20 });
  const client = await udp();
  const got: string[] = [];
  client.on("message", (m) => got.push(m.toString()));
  try {
    client.send("before", relay.port, "127.0.0.1");
    await until(() => got.length === 1);
    // In flight when cut: dropped on its way, as on a pulled cable.
    client.send("in flight", relay.port, "127.0.0.1");
    relay.cut(true);
    client.send("while cut", relay.port, "127.0.0.1");
    await until(() => relay.stats.cut === 2);
    relay.cut(false);
    client.send("after", relay.port, "127.0.0.1");
    await until(() => got.length === 2);
    assert.equal(got, ["before", "after"]);
    assert.is(relay.stats.cut, 2);
  } finally {
    client.close();
    echo.close();
    await relay.close();
  }
});

test.run();
