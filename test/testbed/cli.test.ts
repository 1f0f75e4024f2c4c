import { spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { connect, createServer } from "node:net";
import { createInterface } from "node:readline";
import * as assert from "uvu/assert";
import { test } from "../helpers/uvu.js";

const vmhop = new URL("../../bin/vmhop.js", import.meta.url).pathname;

test("vmhop testbed relay prints one ready line, relays, and exits 0 on SIGTERM", async () => {
  const srv = createServer((s) => s.pipe(s));
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  const port = (srv.address() as { port: number }).port;
  const child = spawn(
    process.execPath,
    [vmhop, "testbed", "relay", "--to", `127.0.0.1:${port}`, "--delay-ms", "5", "--rate-mbit", "100"],
    {
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  try {
    const [line] = (await once(createInterface({ input: child.stdout }), "line")) as [string];
    const m =
      /^relay ready: tcp (127\.0\.0\.1:\d+) -> 127\.0\.0\.1:\d+, delay 5 ms each way, rate 100 Mbit\/s$/.exec(
        line,
      );
    assert.ok(m, line);
    const [host, p] = (m?.[1] ?? "").split(":");
    const c = connect({ host, port: Number(p) });
    c.end("through the cli");
    const parts: Buffer[] = [];
    c.on("data", (b: Buffer) => parts.push(b));
    await once(c, "end");
    assert.is(Buffer.concat(parts).toString(), "through the cli");
    child.kill("SIGTERM");
    const [code] = await once(child, "exit");
    assert.is(code, 0);
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
    srv.close();
  }
});

test("bad arguments exit 2 with a clear message", () => {
  const cases: [string[], RegExp][] = [
    [["relay"], /--to HOST:PORT is required/],
    [
      ["relay", "--to", "127.0.0.1:1", "--delay-ms", "soon"],
      /--delay-ms: expected a number >= 0, got 'soon'/,
    ],
    [["relay", "--to", "nowhere"], /bad target address 'nowhere'/],
    [["relay", "--to", "127.0.0.1:1", "--loss", "0.5"], /--loss and --peer need --udp/],
    [["relay", "--to", "127.0.0.1:1", "--frobnicate"], /Unknown option '--frobnicate'/],
    [["bogus"], /unknown command 'bogus'/],
  ];
  for (const [args, re] of cases) {
    const r = spawnSync(process.execPath, [vmhop, "testbed", ...args], { encoding: "utf8" });
    assert.is(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, re);
  }
});

test.run();
