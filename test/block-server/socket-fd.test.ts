// A socket's descriptor comes from Node's private `_handle.fd`, read in one helper
// (nbd/socket-fd.ts): it must find the right descriptor, and fail with a clear error, never
// silently, where Node does not expose it; the NBD server then drops the client and says why.
import { readlinkSync } from "node:fs";
import { connect, createServer, type Server, Socket } from "node:net";
import * as assert from "uvu/assert";
import { closeFd } from "../../services/block-server/export/libc.js";
import { NbdServer } from "../../services/block-server/nbd/server/index.js";
import { dupSocketFd, SocketFdError, socketFd } from "../../services/block-server/nbd/socket-fd.js";
import { createLogger } from "../../services/common/log.js";
import { test } from "../helpers/uvu.js";
import { until, within } from "../helpers/wait.js";

/** A connected pair of sockets over loopback; `close` ends both and the listener. */
async function pair(): Promise<{ client: Socket; server: Socket; close: () => Promise<void> }> {
  let accepted!: (s: Socket) => void;
  const got = new Promise<Socket>((r) => {
    accepted = r;
  });
  const srv: Server = createServer((s) => accepted(s));
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const port = (srv.address() as { port: number }).port;
  const client = connect(port, "127.0.0.1");
  const server = await within(got, 5000, "the accepted socket");
  return {
    client,
    server,
    close: async () => {
      client.destroy();
      server.destroy();
      await new Promise<void>((r) => srv.close(() => r()));
    },
  };
}

const target = (fd: number) => readlinkSync(`/proc/self/fd/${fd}`);

test("socketFd is the socket's own descriptor; dupSocketFd another one for the same socket", async () => {
  const p = await pair();
  try {
    const fd = socketFd(p.server);
    assert.match(target(fd), /^socket:\[\d+\]$/);
    assert.is.not(target(fd), target(socketFd(p.client)), "each end has its own");
    const copy = dupSocketFd(p.server);
    try {
      assert.is.not(copy, fd);
      assert.is(target(copy), target(fd));
    } finally {
      closeFd(copy);
    }
  } finally {
    await p.close();
  }
});

test("a socket without a descriptor is a clear error: not connected, closed, or a Node that hides it", async () => {
  assert.throws(
    () => socketFd(new Socket()),
    (e: unknown) => e instanceof SocketFdError && /no native handle/.test(String(e)),
  );
  const p = await pair();
  try {
    const handle = (p.server as unknown as { _handle: object })._handle;
    Object.defineProperty(handle, "fd", { value: undefined, configurable: true });
    try {
      assert.throws(
        () => socketFd(p.server),
        (e: unknown) =>
          e instanceof SocketFdError &&
          /does not expose a socket's descriptor as _handle\.fd/.test(String(e)),
      );
    } finally {
      delete (handle as { fd?: unknown }).fd;
    }
    assert.ok(socketFd(p.server) >= 0, "the handle's own fd again");
    p.server.destroy();
    assert.throws(() => socketFd(p.server), /already closed/);
  } finally {
    await p.close();
  }
});

test("the NBD server drops a client whose descriptor it cannot find, with a log line (no silent fallback)", async () => {
  const lines: Record<string, unknown>[] = [];
  const srv = new NbdServer({
    log: createLogger({}, { sink: (l) => lines.push(JSON.parse(l)), level: "info" }),
  });
  const addr = await srv.listen("127.0.0.1:0");
  const port = "port" in addr ? addr.port : 0;
  // Every TCP handle hides its descriptor, as a changed Node might.
  const p = await pair();
  const proto = Object.getPrototypeOf((p.server as unknown as { _handle: object })._handle) as object;
  await p.close();
  const own = Object.getOwnPropertyDescriptor(proto, "fd"); // Node 20: on a parent prototype
  Object.defineProperty(proto, "fd", { get: () => undefined, configurable: true });
  try {
    const c = connect(port, "127.0.0.1");
    c.on("error", () => {});
    let received = 0;
    c.on("data", (d: Buffer) => {
      received += d.length;
    });
    await within(new Promise((r) => c.once("close", r)), 5000, "the server to drop the client");
    assert.is(received, 0, "no greeting");
    const line = await until(
      "the log line",
      () => lines.find((l) => l.msg === "cannot serve a client"),
      5000,
    );
    assert.is(line.level, "error");
    assert.match(JSON.stringify(line.err), /_handle\.fd/);
    assert.is(srv.connectionCount, 0);
  } finally {
    if (own) Object.defineProperty(proto, "fd", own);
    else delete (proto as { fd?: unknown }).fd;
    await srv.close();
  }
});

test.run();
