import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import * as assert from "uvu/assert";
import { freePort } from "../../testbed/ports.js";
import { startRelay } from "../../testbed/relay.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";

function sha(b: Buffer): string {
  return createHash("sha256").update(b).digest("hex");
}

/** A TCP (or unix) server running `onConn` for each connection; closes everything on close(). */
async function serve(
  onConn: (s: Socket) => void,
  at: number | string = 0,
): Promise<{ port: number; server: Server; close(): Promise<void> }> {
  const socks = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (s) => {
    socks.add(s);
    s.on("close", () => socks.delete(s));
    s.on("error", () => {});
    onConn(s);
  });
  if (typeof at === "string") server.listen(at);
  else server.listen(at, "127.0.0.1");
  await once(server, "listening");
  const addr = server.address();
  return {
    port: typeof addr === "object" && addr ? addr.port : 0,
    server,
    close: () =>
      new Promise((r) => {
        for (const s of socks) s.destroy();
        server.close(() => r());
      }),
  };
}

function dial(port: number | string): Promise<Socket> {
  const s =
    typeof port === "string"
      ? connect({ path: port, allowHalfOpen: true })
      : connect({ port, host: "127.0.0.1", allowHalfOpen: true });
  return new Promise((resolve, reject) => {
    s.once("connect", () => resolve(s));
    s.once("error", reject);
  });
}

/** Reads until the peer ends; resolves with everything received. */
function readAll(s: Socket): Promise<Buffer> {
  const parts: Buffer[] = [];
  s.on("data", (b: Buffer) => parts.push(b));
  return new Promise((resolve, reject) => {
    s.once("end", () => resolve(Buffer.concat(parts)));
    s.once("error", reject);
  });
}

/** Resolves when the socket is closed, whatever the reason (events.once would reject on 'error'). */
function closed(s: Socket): Promise<void> {
  s.on("error", () => {});
  return new Promise((resolve) => s.once("close", () => resolve()));
}

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

function readN(s: Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let got = 0;
    const onData = (b: Buffer) => {
      parts.push(b);
      got += b.length;
      if (got >= n) {
        s.off("data", onData);
        resolve(Buffer.concat(parts));
      }
    };
    s.on("data", onData);
    s.once("error", reject);
  });
}

test("large random payload arrives intact and in order both ways, with bounded buffering", async () => {
  const echo = await serve((s) => s.pipe(s));
  const bufferBytes = 256 << 10;
  const relay = await startRelay({ target: `127.0.0.1:${echo.port}`, delayMs: 3, bufferBytes });
  try {
    const payload = randomBytes(16 << 20);
    const c = await dial(relay.port as number);
    const back = readAll(c);
    c.end(payload);
    const got = await back;
    assert.is(got.length, payload.length);
    assert.is(sha(got), sha(payload));
    assert.is(relay.stats.bytesToTarget, payload.length);
    assert.is(relay.stats.bytesToClient, payload.length);
    // Sender is paused once a direction holds bufferBytes; one more read chunk may land.
    assert.ok(
      relay.stats.peakQueuedBytes <= bufferBytes + (256 << 10),
      `peak ${relay.stats.peakQueuedBytes}`,
    );
  } finally {
    await relay.close();
    await echo.close();
  }
});

test("round trip takes at least twice the one-way delay, greeting at least one RTT after connect", async () => {
  const delayMs = 20;
  const echo = await serve((s) => {
    s.write("G");
    s.pipe(s);
  });
  const relay = await startRelay({ target: `127.0.0.1:${echo.port}`, delayMs });
  try {
    const t0 = performance.now();
    const c = await dial(relay.port as number);
    const greeting = await readN(c, 1);
    assert.is(greeting.toString(), "G");
    assert.ok(performance.now() - t0 >= 2 * delayMs, "greeting came back sooner than one RTT");
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      c.write(Buffer.from([i]));
      const b = await readN(c, 1);
      const rtt = performance.now() - t;
      assert.is(b[0], i);
      assert.ok(rtt >= 2 * delayMs, `rtt ${rtt} < ${2 * delayMs}`);
    }
    c.destroy();
  } finally {
    await relay.close();
    await echo.close();
  }
});

test("N bytes at rate R take at least N/R", async () => {
  const sink = await serve((s) => {
    let n = 0;
    s.on("data", (b: Buffer) => {
      n += b.length;
    });
    s.on("end", () => s.end(String(n)));
  });
  const rate = 40e6;
  const relay = await startRelay({ target: `127.0.0.1:${sink.port}`, delayMs: 1, rateBitsPerSecond: rate });
  try {
    const n = 2 << 20;
    const c = await dial(relay.port as number);
    const t0 = performance.now();
    const reply = readAll(c);
    c.end(randomBytes(n));
    assert.is((await reply).toString(), String(n));
    const ms = performance.now() - t0;
    assert.ok(ms >= ((n * 8) / rate) * 1000, `${n} bytes in ${ms} ms at ${rate} bit/s`);
  } finally {
    await relay.close();
    await sink.close();
  }
});

test("half-close propagates: the server sees EOF and can still answer", async () => {
  let serverSawEnd = false;
  const srv = await serve((s) => {
    const parts: Buffer[] = [];
    s.on("data", (b: Buffer) => parts.push(b));
    s.on("end", () => {
      serverSawEnd = true;
      s.end(`got ${Buffer.concat(parts).toString()}`);
    });
  });
  const relay = await startRelay({ target: `127.0.0.1:${srv.port}`, delayMs: 5 });
  try {
    const c = await dial(relay.port as number);
    const reply = readAll(c);
    c.end("question");
    assert.is((await reply).toString(), "got question");
    assert.ok(serverSawEnd);
    await closed(c);
  } finally {
    await relay.close();
    await srv.close();
  }
});

test("a refusing target closes the client side and the relay keeps serving", async () => {
  const dead = await freePort();
  const relay = await startRelay({ target: `127.0.0.1:${dead}`, delayMs: 2 });
  try {
    for (let i = 0; i < 2; i++) {
      const c = await dial(relay.port as number);
      c.on("error", () => {});
      c.write("hello");
      c.resume();
      await closed(c);
    }
    assert.is(relay.stats.failedConnects, 2);
    assert.is(relay.stats.accepted, 2);
    await until(() => relay.stats.active === 0);
  } finally {
    await relay.close();
  }
});

test("a target that vanishes mid-stream resets the client; a client reset reaches the target", async () => {
  const seen: string[] = [];
  const srv = await serve((s) => {
    s.once("data", (b: Buffer) => {
      if (b.toString().startsWith("die")) s.resetAndDestroy();
    });
    s.on("error", (e: NodeJS.ErrnoException) => seen.push(e.code ?? "error"));
  });
  const relay = await startRelay({ target: `127.0.0.1:${srv.port}`, delayMs: 2 });
  try {
    const c = await dial(relay.port as number);
    let clientErr = "";
    c.on("error", (e: NodeJS.ErrnoException) => {
      clientErr = e.code ?? "error";
    });
    c.write("die");
    c.resume();
    await closed(c);
    assert.is(clientErr, "ECONNRESET");

    const c2 = await dial(relay.port as number);
    c2.write("live");
    await new Promise((r) => setTimeout(r, 20));
    c2.resetAndDestroy();
    c2.on("error", () => {});
    await until(() => seen.includes("ECONNRESET") && relay.stats.active === 0);
    assert.ok(relay.stats.resets >= 2);
  } finally {
    await relay.close();
    await srv.close();
  }
});

test("unix socket listen and target", async () => {
  const dir = tempDir("vmhop-testbed-");
  const srv = await serve((s) => s.pipe(s), join(dir.path, "target.sock"));
  const relay = await startRelay({
    listen: `unix:${join(dir.path, "relay.sock")}`,
    target: `unix:${join(dir.path, "target.sock")}`,
    delayMs: 1,
  });
  try {
    assert.is(relay.address, `unix:${join(dir.path, "relay.sock")}`);
    const c = await dial(relay.path as string);
    const back = readAll(c);
    c.end("over unix");
    assert.is((await back).toString(), "over unix");
  } finally {
    await relay.close();
    await srv.close();
    dir.cleanup();
  }
});

test("close() drops live connections", async () => {
  const srv = await serve(() => {});
  const relay = await startRelay({ target: `127.0.0.1:${srv.port}`, delayMs: 1 });
  const c = await dial(relay.port as number);
  c.on("error", () => {});
  const gone = closed(c);
  await until(() => relay.stats.accepted === 1);
  await relay.close();
  await gone;
  assert.is(relay.stats.active, 0);
  await srv.close();
});

test("bad arguments give clear errors", async () => {
  const cases: [Parameters<typeof startRelay>[0], RegExp][] = [
    [{ target: "127.0.0.1:1", delayMs: -1 }, /delay must be a number of ms >= 0/],
    [{ target: "127.0.0.1:1", delayMs: Number.NaN }, /delay must be/],
    [{ target: "127.0.0.1:1", delayMs: 1, rateBitsPerSecond: -5 }, /rate must be/],
    [{ target: "nowhere", delayMs: 1 }, /bad target address 'nowhere'/],
    [{ target: "127.0.0.1:99999", delayMs: 1 }, /port 99999 out of range/],
    [{ listen: "localhost", target: "127.0.0.1:1", delayMs: 1 }, /bad listen address/],
    [{ target: "127.0.0.1:1", delayMs: 1, jitterMs: -1 }, /jitter/],
  ];
  for (const [opts, re] of cases) {
    try {
      await startRelay(opts);
      assert.unreachable(`accepted ${JSON.stringify(opts)}`);
    } catch (err) {
      assert.match((err as Error).message, re);
    }
  }
  const busy = await serve(() => {});
  try {
    await startRelay({ listen: `127.0.0.1:${busy.port}`, target: "127.0.0.1:1", delayMs: 1 });
    assert.unreachable("listened on a busy port");
  } catch (err) {
    assert.is((err as NodeJS.ErrnoException).code, "EADDRINUSE");
  } finally {
    await busy.close();
  }
});

test.run();
