import { performance } from "node:perf_hooks";
import * as assert from "uvu/assert";
import { formatEndpoint, parseEndpoint } from "../../testbed/address.js";
import { DelayQueue } from "../../testbed/delay-queue.js";
import { Link } from "../../testbed/link.js";
import { test } from "../helpers/uvu.js";

test("link: serialisation at the rate, then the delay; a busy link queues later bytes", () => {
  const l = new Link({ delayMs: 10, rateBitsPerSecond: 8e6 }); // 1000 bytes per ms
  assert.is(l.schedule(1000, 0), 11);
  // Handed over while the first is still being sent: waits for the link.
  assert.is(l.schedule(2000, 0.5), 13);
  // Idle link again: starts at once.
  assert.is(l.schedule(0, 100), 110);
  assert.is(l.bandwidthDelayBytes(), 10_000);
  const unlimited = new Link({ delayMs: 5 });
  assert.is(unlimited.schedule(1 << 30, 7), 12);
  assert.is(unlimited.bandwidthDelayBytes(), Number.POSITIVE_INFINITY);
  assert.throws(() => new Link({ delayMs: -1 }), /delay must be/);
  assert.throws(() => new Link({ delayMs: 1, rateBitsPerSecond: Number.NaN }), /rate must be/);
});

test("delay queue: delivers in order, never early, and holds while the consumer is blocked", async () => {
  const got: [number, number][] = [];
  let accept = true;
  const q = new DelayQueue<number>((n) => {
    got.push([n, performance.now()]);
    return accept;
  });
  const t0 = performance.now();
  q.push(t0 + 5, 1, 10);
  q.push(t0 + 5, 2, 10);
  q.push(t0 + 15, 3, 10);
  assert.is(q.bytes, 30);
  accept = false;
  await new Promise((r) => setTimeout(r, 30));
  // The first delivery said "full": the rest waits.
  assert.equal(
    got.map(([n]) => n),
    [1],
  );
  assert.ok(got[0][1] >= t0 + 5);
  accept = true;
  q.resume();
  assert.equal(
    got.map(([n]) => n),
    [1, 2, 3],
  );
  assert.is(q.bytes, 0);
  q.push(performance.now() + 1000, 4, 1);
  q.close();
  assert.is(q.length, 0);
});

test("endpoints parse and format; bad ones are explained", () => {
  assert.equal(parseEndpoint("127.0.0.1:80"), { host: "127.0.0.1", port: 80 });
  assert.equal(parseEndpoint("[::1]:80"), { host: "::1", port: 80 });
  assert.equal(parseEndpoint(":80"), { host: "127.0.0.1", port: 80 });
  assert.equal(parseEndpoint("unix:/run/x.sock"), { path: "/run/x.sock" });
  assert.equal(parseEndpoint("/run/x.sock"), { path: "/run/x.sock" });
  assert.is(formatEndpoint({ host: "::1", port: 80 }), "[::1]:80");
  assert.is(formatEndpoint({ path: "/a" }), "unix:/a");
  assert.throws(() => parseEndpoint("host"), /expected HOST:PORT/);
  assert.throws(() => parseEndpoint("unix:"), /empty unix socket path/);
  assert.throws(() => parseEndpoint("h:70000"), /out of range/);
});

test.run();
