// The proxy's zero-copy fetch path on its own: a worker thread splicing upstream READ
// replies into the cache file. Real nbdkit upstreams (TCP and unix socket); a relay in
// between that corrupts or cuts the reply stream once transmission has started.
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync, truncateSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { BackendError } from "../../services/block-server/export/backend.js";
import { NbdConnectionError } from "../../services/block-server/nbd/client/client.js";
import { fetchThreads } from "../../services/block-server/proxy/fetch-thread-pool.js";
import { FileFetcher } from "../../services/block-server/proxy/file-fetcher.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { makeImage, type RunningServer, startNbdkit } from "./fixtures/proxy-servers.js";

const dir = tempDir("vmhop-fetcher-");
const SIZE = 8 << 20;
let image: string;
let data: Buffer;
let n = 0;
const t = gate(test, ["nbdkit"], "fetch worker against real nbdkit");

t.before(() => {
  image = join(dir.path, "up.img");
  data = makeImage(image, SIZE);
});
t.after(() => dir.cleanup());

function freshCache(): string {
  const p = join(dir.path, `cache-${n++}`);
  writeFileSync(p, "");
  truncateSync(p, SIZE);
  return p;
}

/**
 * A TCP relay to `target` that, once the client's first transmission request went by
 * (the handshake is over), either flips the next reply's magic ("corrupt") or forwards
 * `cutAfter` more bytes of replies and then drops both ends ("cut").
 */
async function badRelay(
  target: { host: string; port: number },
  how: { corrupt: true } | { cutAfter: number },
): Promise<{ url: string; close: () => void }> {
  const REQUEST_MAGIC = Buffer.from([0x25, 0x60, 0x95, 0x13]);
  const server = net.createServer((client) => {
    const up = net.createConnection(target);
    let transmitting = false;
    let forwarded = 0;
    client.on("data", (b) => {
      if (b.includes(REQUEST_MAGIC)) transmitting = true;
      up.write(b);
    });
    up.on("data", (b: Buffer) => {
      if (!transmitting) return void client.write(b);
      if ("corrupt" in how) {
        if (forwarded === 0) b[0] ^= 0xff;
        forwarded += b.length;
        return void client.write(b);
      }
      const room = how.cutAfter - forwarded;
      forwarded += b.length;
      if (room > 0) client.write(b.subarray(0, room));
      if (forwarded >= how.cutAfter) {
        client.destroy();
        up.destroy();
      }
    });
    for (const s of [client, up]) s.on("error", () => {});
    client.on("close", () => up.destroy());
    up.on("close", () => client.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  return { url: `nbd://127.0.0.1:${port}/disk`, close: () => server.close() };
}

function portOf(up: RunningServer): { host: string; port: number } {
  const u = new URL(up.url);
  return { host: u.hostname, port: Number(u.port) };
}

t("reads land in the cache file byte for byte, many at once, over TCP and a unix socket", async () => {
  const sock = join(dir.path, "nbdkit.sock");
  const tcp = await startNbdkit("file", [image]);
  const unix = await startNbdkit("file", [image], { socket: sock });
  try {
    for (const url of [tcp.url, unix.url]) {
      const cache = freshCache();
      const f = await FileFetcher.open(url, cache);
      assert.is(f.size, SIZE);
      const chunk = 384 * 1024; // not a power of two: pieces end mid-pipe
      const reads: Promise<void>[] = [];
      for (let o = 0; o < SIZE; o += chunk) reads.push(f.read(o, Math.min(chunk, SIZE - o)));
      await Promise.all(reads);
      await f.close();
      assert.ok(readFileSync(cache).equals(data), `${url}: cache equals the image`);
      assert.instance(await f.read(0, 1).catch((e) => e), NbdConnectionError, "closed fetcher refuses");
    }
  } finally {
    await tcp.stop();
    await unix.stop();
  }
});

t("an upstream error fails that read alone, by name; the connection carries on", async () => {
  const up = await startNbdkit("file", [image]);
  try {
    const cache = freshCache();
    const f = await FileFetcher.open(up.url, cache);
    const [bad, good] = await Promise.allSettled([f.read(SIZE - 4096, 8192), f.read(4096, 4096)]);
    assert.is(bad.status, "rejected");
    const e = (bad as PromiseRejectedResult).reason;
    assert.instance(e, BackendError);
    assert.match(e.message, /upstream: EINVAL/);
    assert.is(good.status, "fulfilled");
    await f.read(65536, 65536);
    await f.close();
    const c = readFileSync(cache);
    assert.ok(c.subarray(4096, 8192).equals(data.subarray(4096, 8192)));
    assert.ok(c.subarray(65536, 131072).equals(data.subarray(65536, 131072)));
  } finally {
    await up.stop();
  }
});

t("a reply with a bad magic: every pending read fails as a connection error, nothing hangs", async () => {
  const up = await startNbdkit("file", [image]);
  const relay = await badRelay(portOf(up), { corrupt: true });
  try {
    const f = await FileFetcher.open(relay.url, freshCache());
    const closed = new Promise<Error>((r) => f.once("close", r));
    const results = await Promise.allSettled([f.read(0, 65536), f.read(65536, 65536), f.read(1 << 20, 4096)]);
    for (const r of results) {
      assert.is(r.status, "rejected");
      assert.instance((r as PromiseRejectedResult).reason, NbdConnectionError);
    }
    assert.match((await closed).message, /bad magic/);
    await f.close();
  } finally {
    relay.close();
    await up.stop();
  }
});

t(
  "the upstream going away while idle: the fetcher says so at once (it does not poll a dead socket)",
  async () => {
    const up = await startNbdkit("file", [image]);
    const f = await FileFetcher.open(up.url, freshCache());
    await f.read(0, 4096);
    const closed = new Promise<Error>((r) => f.once("close", r));
    await up.kill();
    let timer: NodeJS.Timeout | undefined;
    const err = await Promise.race([
      closed,
      new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), 5000))),
    ]);
    clearTimeout(timer);
    assert.ok(err, "close reported");
    assert.match(String(err?.message), /closed the connection/);
    assert.instance(await f.read(0, 1).catch((e) => e), NbdConnectionError);
    await f.close();
  },
);

t("the upstream vanishing mid-reply: pending reads fail, the rest of the cache is untouched", async () => {
  const up = await startNbdkit("file", [image]);
  const relay = await badRelay(portOf(up), { cutAfter: 16 + 65536 + 16 + 1000 });
  try {
    const cache = freshCache();
    const mark = randomBytes(4096);
    const fd = readFileSync(cache);
    mark.copy(fd, 3 << 20);
    writeFileSync(cache, fd);
    const f = await FileFetcher.open(relay.url, cache);
    const offsets = [0, 1 << 20, 2 << 20];
    const results = await Promise.allSettled(offsets.map((o) => f.read(o, 65536)));
    // The server may answer in any order: one reply got through whole, the rest did not.
    const done = results.flatMap((r, i) => (r.status === "fulfilled" ? [offsets[i]] : []));
    assert.is(done.length, 1, "the complete reply before the cut is stored");
    for (const r of results) if (r.status === "rejected") assert.instance(r.reason, NbdConnectionError);
    await f.close();
    const c = readFileSync(cache);
    assert.ok(c.subarray(done[0], done[0] + 65536).equals(data.subarray(done[0], done[0] + 65536)));
    assert.ok(c.subarray(3 << 20, (3 << 20) + 4096).equals(mark), "nothing written where no read went");
  } finally {
    relay.close();
    await up.stop();
  }
});

t(
  "fetch threads outlive their connections: the next fetcher takes the idle one; late commands of the old one are ignored",
  async () => {
    const up = await startNbdkit("file", [image]);
    try {
      const c1 = freshCache();
      const f1 = await FileFetcher.open(up.url, c1);
      const idle = fetchThreads.idleCount;
      await f1.read(0, 65536);
      await f1.close();
      assert.is(fetchThreads.idleCount, idle + 1, "the closed fetcher's thread is idle, not gone");
      const c2 = freshCache();
      const f2 = await FileFetcher.open(up.url, c2);
      assert.is(fetchThreads.idleCount, idle, "the new fetcher took the idle thread");
      f1.destroy(); // a stale close: must not end f2's session
      await f2.read(1 << 20, 65536);
      assert.ok(
        readFileSync(c2)
          .subarray(1 << 20, (1 << 20) + 65536)
          .equals(data.subarray(1 << 20, (1 << 20) + 65536)),
      );
      assert.ok(
        readFileSync(c2).subarray(0, 65536).equals(Buffer.alloc(65536)),
        "f1's read did not land in f2's cache",
      );
      await f2.close();
      // A cache the thread cannot open fails the open, and the thread is free again.
      const before = fetchThreads.idleCount;
      const err = await FileFetcher.open(up.url, join(dir.path, "no", "such", "cache")).catch((e) => e);
      assert.instance(err, NbdConnectionError);
      assert.match(String(err.message), /ENOENT/);
      for (let i = 0; i < 50 && fetchThreads.idleCount !== before; i++)
        await new Promise((r) => setTimeout(r, 20));
      assert.is(fetchThreads.idleCount, before, "the thread came back after the failed open");
    } finally {
      await up.stop();
    }
  },
);

t(
  "the process exits while a fetch thread serves a connection (it does not hang joining the thread)",
  async () => {
    const up = await startNbdkit("file", [image]);
    const fixture = new URL("./fixtures/exit-while-fetching.ts", import.meta.url).pathname;
    const child = spawn(process.execPath, ["--import", "tsx", fixture, up.url, freshCache()], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (b) => {
      out += b;
    });
    child.stderr.on("data", (b) => {
      out += b;
    });
    try {
      // A hang (the old thread slept in poll() without a timeout) is caught by this bound.
      const code = await new Promise<number | string>((resolve) => {
        const timer = setTimeout(() => resolve("still running after 60 s"), 60_000);
        child.on("exit", (c, sig) => {
          clearTimeout(timer);
          resolve(c ?? String(sig));
        });
      });
      assert.match(out, /open/, out);
      assert.is(code, 0, out);
    } finally {
      child.kill("SIGKILL");
      await up.kill();
    }
  },
);

t.run();
