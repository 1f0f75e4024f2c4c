// The host power drivers against stand-ins started by the test: a fake `ipmitool` first on PATH
// (records its arguments, keeps a state file), a small HTTP server speaking the Redfish
// resources used (basic auth, PowerState, ComputerSystem.Reset, an error answer), WoL magic
// packets received on a real UDP socket, the user's own commands. No error carries a password.
import { createSocket } from "node:dgram";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { checkPowerConfig, makeDriver, parsePowerParams } from "../../services/power/config.js";
import { Credentials } from "../../services/power/credentials.js";
import { PowerError } from "../../services/power/driver.js";
import { magicPacket, sendMagicPacket } from "../../services/power/wol.js";
import { freePort } from "../../testbed/ports.js";
import { serveTestbedPower } from "../../testbed/power.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";

const dir = tempDir("vmhop-power-");
const servers: Server[] = [];
test.after(async () => {
  for (const s of servers) await new Promise((r) => s.close(r));
  dir.cleanup();
});

const SECRET = "s3cr3t-pw-7Q";

/** The error a promise rejects with (fails the test if it resolves). */
async function failure(p: Promise<unknown>): Promise<PowerError> {
  try {
    await p;
  } catch (err) {
    assert.instance(err, PowerError);
    return err as PowerError;
  }
  assert.unreachable("expected a PowerError");
  throw new Error("unreachable");
}

test("config: unknown driver, missing or unknown parameters, a bad MAC or URL are refused clearly", () => {
  const bad = (c: Parameters<typeof checkPowerConfig>[0], re: RegExp) => {
    try {
      checkPowerConfig(c);
    } catch (err) {
      assert.is((err as PowerError).kind, "invalid");
      assert.match((err as Error).message, re);
      return;
    }
    assert.unreachable(`accepted ${JSON.stringify(c)}`);
  };
  bad(
    { driver: "acpi", params: {} },
    /unknown power driver "acpi": one of ipmi, redfish, wol, command, testbed/,
  );
  bad({ driver: "ipmi", params: {} }, /power driver ipmi needs the parameter address/);
  bad({ driver: "ipmi", params: { address: "a", password: "x" } }, /ipmi has no parameter password/);
  bad({ driver: "wol", params: { mac: "zz:00:00:00:00:00" } }, /wol mac must be aa:bb:cc:dd:ee:ff/);
  bad({ driver: "redfish", params: { url: "not a url" } }, /redfish url "not a url" is not a URL/);
  bad({ driver: "redfish", params: { url: "http://root:pw@bmc" } }, /must not carry credentials/);
  checkPowerConfig({ driver: "command", params: { on: "true", off: "true" } });
  assert.equal(parsePowerParams("address=10.0.0.5,username=admin"), {
    address: "10.0.0.5",
    username: "admin",
  });
  assert.equal(parsePowerParams('{"on":"a, b"}'), { on: "a, b" });
  assert.throws(() => parsePowerParams("address"), /expected key=value/);
});

test("credentials: file per host or '*', else the environment; a missing one says where to put it", () => {
  const file = join(dir.path, "creds.json");
  writeFileSync(file, JSON.stringify({ h1: { password: "p1" }, "*": { password: "any" } }));
  const c = Credentials.load(file, { VMHOP_IPMI_PASSWORD: "env" });
  assert.is(c.password("h1", "ipmi"), "p1");
  assert.is(c.password("h9", "ipmi"), "any");
  const env = Credentials.load(undefined, { VMHOP_REDFISH_PASSWORD: "r" });
  assert.is(env.password("h1", "redfish"), "r");
  assert.throws(
    () => env.password("h1", "ipmi"),
    /no password for host h1's ipmi power driver: set VMHOP_IPMI_PASSWORD or give --power-credentials FILE/,
  );
  // A broken file: named, its text (which may hold passwords) not quoted.
  writeFileSync(file, `{"h1": {"password": "${SECRET}"`);
  const err = (() => {
    try {
      Credentials.load(file);
    } catch (e) {
      return e as Error;
    }
  })();
  assert.match(err!.message, /creds\.json: not valid JSON/);
  assert.not.match(err!.message, new RegExp(SECRET));
});

// A stand-in ipmitool: records its arguments and IPMI_PASSWORD's presence, keeps the chassis
// state in a file, and refuses a wrong password echoing it (as a careless tool might).
const IPMITOOL = `#!/bin/sh
d=$(dirname "$0")
echo "$*" >> "$d/args"
if [ "$IPMI_PASSWORD" != "$(cat "$d/password")" ]; then
  echo "Error: Unable to establish IPMI v2 / RMCP+ session with password $IPMI_PASSWORD" >&2; exit 1
fi
state=$(cat "$d/state" 2>/dev/null || echo off)
case "$*" in
  *"chassis power status") echo "Chassis Power is $state" ;;
  *"chassis power on") echo on > "$d/state"; echo "Chassis Power Control: Up/On" ;;
  *"chassis power soft") echo off > "$d/state"; echo "Chassis Power Control: Soft" ;;
  *) echo "unknown command $*" >&2; exit 1 ;;
esac
`;

test("ipmi: chassis power on/soft/status through ipmitool on PATH, the password in IPMI_PASSWORD only", async () => {
  const bin = join(dir.path, "bin");
  mkdirSync(bin);
  writeFileSync(join(bin, "ipmitool"), IPMITOOL);
  chmodSync(join(bin, "ipmitool"), 0o755);
  writeFileSync(join(bin, "password"), SECRET);
  const path = process.env.PATH;
  process.env.PATH = `${bin}:${path}`;
  try {
    const config = { driver: "ipmi", params: { address: "10.9.8.7", username: "admin" } };
    const d = makeDriver("h1", config, Credentials.load(undefined, { VMHOP_IPMI_PASSWORD: SECRET }));
    assert.is(await d.status(), "off");
    await d.on();
    assert.is(await d.status(), "on");
    await d.off();
    assert.is(await d.status(), "off");
    const args = readFileSync(join(bin, "args"), "utf8").trim().split("\n");
    assert.equal(args, [
      "-I lanplus -H 10.9.8.7 -U admin -E chassis power status",
      "-I lanplus -H 10.9.8.7 -U admin -E chassis power on",
      "-I lanplus -H 10.9.8.7 -U admin -E chassis power status",
      "-I lanplus -H 10.9.8.7 -U admin -E chassis power soft",
      "-I lanplus -H 10.9.8.7 -U admin -E chassis power status",
    ]);
    assert.not.match(args.join("\n"), new RegExp(SECRET)); // never on the command line

    // A wrong password: ipmitool's failure, its echo of the password taken out.
    const wrong = `${SECRET}-wrong`;
    const bad = makeDriver("h1", config, Credentials.load(undefined, { VMHOP_IPMI_PASSWORD: wrong }));
    const err = await failure(bad.on());
    assert.is(err.kind, "unavailable");
    assert.match(
      err.message,
      /ipmitool chassis power on \(10\.9\.8\.7\): exited 1: Error: Unable to establish IPMI v2/,
    );
    assert.not.match(err.message, new RegExp(SECRET));
    assert.match(err.message, /with password \*\*\*/);
  } finally {
    process.env.PATH = path;
  }
  // No ipmitool at all: said so.
  const none = makeDriver(
    "h1",
    { driver: "ipmi", params: { address: "x" } },
    Credentials.load(undefined, { VMHOP_IPMI_PASSWORD: SECRET }),
  );
  const saved = process.env.PATH;
  process.env.PATH = join(dir.path, "empty");
  try {
    const nf = (await failure(none.status())).message;
    assert.match(nf, /ipmitool chassis power status \(x\): not found on PATH/, nf);
  } finally {
    process.env.PATH = saved;
  }
});

/** A Redfish BMC with one system: basic auth admin/SECRET; `busy` makes resets answer 409. */
async function startRedfish() {
  const bmc = { state: "Off", busy: false, requests: [] as string[] };
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => {
      body += d;
    });
    req.on("end", () => {
      bmc.requests.push(`${req.method} ${req.url} ${body}`.trim());
      const send = (code: number, o: unknown) => {
        res.writeHead(code, { "content-type": "application/json" });
        res.end(JSON.stringify(o));
      };
      const error = (code: number, msg: string) =>
        send(code, {
          error: {
            code: "Base.1.8.GeneralError",
            message: "See ExtendedInfo",
            "@Message.ExtendedInfo": [{ Message: msg }],
          },
        });
      if (req.headers.authorization !== `Basic ${Buffer.from(`admin:${SECRET}`).toString("base64")}`)
        return error(401, "The authentication credentials are not valid.");
      if (req.method === "GET" && req.url === "/redfish/v1/Systems/1")
        return send(200, { "@odata.id": "/redfish/v1/Systems/1", Id: "1", PowerState: bmc.state });
      if (req.method === "POST" && req.url === "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset") {
        if (bmc.busy) return error(409, "A power operation is already in progress.");
        const t = (JSON.parse(body) as { ResetType?: string }).ResetType;
        if (t === "On") bmc.state = "On";
        else if (t === "GracefulShutdown") bmc.state = "Off";
        else
          return error(
            400,
            `The value ${t} for the parameter ResetType is not in the list of acceptable values.`,
          );
        res.writeHead(204);
        return res.end();
      }
      error(404, "not here");
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  servers.push(server);
  return { bmc, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

test("redfish: PowerState and ComputerSystem.Reset with basic auth; error answers and a wrong password are clear", async () => {
  const { bmc, url } = await startRedfish();
  const config = { driver: "redfish", params: { url, username: "admin" } };
  const d = makeDriver("h1", config, Credentials.load(undefined, { VMHOP_REDFISH_PASSWORD: SECRET }));
  assert.is(await d.status(), "off");
  await d.on();
  assert.is(bmc.state, "On");
  assert.is(await d.status(), "on");
  await d.off();
  assert.is(bmc.state, "Off");
  assert.equal(bmc.requests, [
    "GET /redfish/v1/Systems/1",
    'POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset {"ResetType":"On"}',
    "GET /redfish/v1/Systems/1",
    'POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset {"ResetType":"GracefulShutdown"}',
  ]);
  bmc.state = "PoweringOn";
  assert.is(await d.status(), "unknown"); // not settled yet

  bmc.busy = true;
  const busy = await failure(d.on());
  assert.is(busy.kind, "unavailable");
  assert.match(
    busy.message,
    /redfish POST .*ComputerSystem\.Reset: HTTP 409 A power operation is already in progress\./,
  );

  const wrong = makeDriver("h1", config, Credentials.load(undefined, { VMHOP_REDFISH_PASSWORD: "nope" }));
  const denied = await failure(wrong.status());
  assert.is(denied.kind, "unauthenticated");
  assert.match(denied.message, /HTTP 401 The authentication credentials are not valid\./);

  // Nothing listening: unavailable, naming the URL.
  const gone = makeDriver(
    "h1",
    { driver: "redfish", params: { url: `http://127.0.0.1:${await freePort()}` } },
    Credentials.load(undefined, { VMHOP_REDFISH_PASSWORD: SECRET }),
  );
  const down = await failure(gone.status());
  assert.is(down.kind, "unavailable");
  assert.match(down.message, /redfish GET http:\/\/127\.0\.0\.1:\d+\/redfish\/v1\/Systems\/1: /);
  for (const e of [busy, denied, down]) assert.not.match(e.message, new RegExp(SECRET));
});

test("wol: the magic packet is 6 × 0xFF then the MAC 16 times, and arrives over UDP", async () => {
  const p = magicPacket("52:54:00:ab:cd:ef");
  assert.is(p.length, 102);
  assert.equal([...p.subarray(0, 6)], [255, 255, 255, 255, 255, 255]);
  for (let i = 0; i < 16; i++)
    assert.equal([...p.subarray(6 + 6 * i, 12 + 6 * i)], [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
  assert.equal(magicPacket("52-54-00-AB-CD-EF"), p);

  const sock = createSocket("udp4");
  await new Promise<void>((r) => sock.bind(0, "127.0.0.1", r));
  const port = sock.address().port;
  const got = new Promise<Buffer>((r) => sock.once("message", (m) => r(m)));
  await sendMagicPacket("52:54:00:ab:cd:ef", "127.0.0.1", port);
  assert.equal(await got, p);
  // Through the driver, which also cannot switch off without an off_command.
  const d = makeDriver(
    "h1",
    { driver: "wol", params: { mac: "52:54:00:00:00:01", broadcast: "127.0.0.1", port: String(port) } },
    Credentials.load(undefined, {}),
  );
  const again = new Promise<Buffer>((r) => sock.once("message", (m) => r(m)));
  await d.on();
  assert.equal(await again, magicPacket("52:54:00:00:00:01"));
  assert.is(await d.status(), "unknown");
  const off = await failure(d.off());
  assert.is(off.kind, "unimplemented");
  assert.match(off.message, /wol cannot switch a host off: give the driver an off_command/);
  sock.close();
});

test("command: the user's scripts switch and report; a failing one is clear and keeps the password out", async () => {
  const state = join(dir.path, "cmd-state");
  const params = {
    on: `echo on > ${state}`,
    off: `echo off > ${state}`,
    status: `cat ${state} 2>/dev/null || echo off`,
  };
  const d = makeDriver(
    "h1",
    { driver: "command", params },
    Credentials.load(undefined, { VMHOP_COMMAND_PASSWORD: SECRET }),
  );
  assert.is(await d.status(), "off");
  await d.on();
  assert.is(await d.status(), "on");
  await d.off();
  assert.is(readFileSync(state, "utf8").trim(), "off");
  const bad = makeDriver(
    "h1",
    {
      driver: "command",
      params: { on: 'echo "login with $VMHOP_POWER_PASSWORD refused" >&2; exit 3', off: "true" },
    },
    Credentials.load(undefined, { VMHOP_COMMAND_PASSWORD: SECRET }),
  );
  const err = await failure(bad.on());
  assert.match(err.message, /exited 3: login with \*\*\* refused/);
  assert.not.match(err.message, new RegExp(SECRET));
});

test("testbed: the socket protocol; off answers once the host is down, on boots it after the delay", async () => {
  const done: string[] = [];
  const power = await serveTestbedPower(
    join(dir.path, "tb.sock"),
    {
      off: async () => void done.push("off"),
      on: async () => void done.push("on"),
    },
    { bootDelayMs: 300 },
  );
  try {
    const d = makeDriver(
      "h1",
      { driver: "testbed", params: { socket: power.socket } },
      Credentials.load(undefined, {}),
    );
    assert.is(await d.status(), "on");
    await d.off();
    assert.equal(done, ["off"]);
    assert.is(await d.status(), "off");
    await d.on(); // accepted at once: booting
    assert.is(power.state, "booting");
    await until("the host to boot", async () => (await d.status()) === "on", 10_000, 50);
    assert.equal(done, ["off", "on"]);
    const gone = makeDriver(
      "h1",
      { driver: "testbed", params: { socket: join(dir.path, "none.sock") } },
      Credentials.load(undefined, {}),
    );
    assert.match(
      (await failure(gone.status())).message,
      /testbed power status \(.*none\.sock\): connect ENOENT/,
    );
  } finally {
    await power.close();
  }
});

test.run();
