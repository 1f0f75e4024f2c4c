// The `testbed` power driver for real: a two-site bed (namespaces, every service a process), the
// control-plane process switching h2 off and on through the socket the test bed serves. Off
// stops s2's real block-server and page-server; on boots them again after the boot delay (same
// addresses, same state: an export made before is still there) and the wake counts only once
// the page-server answers.
import { join } from "node:path";
import * as assert from "uvu/assert";
import { BlockServer } from "../../services/control-plane/block-client.js";
import { destroyStaleNetns, uniqueNetnsPrefix } from "../../testbed/netns.js";
import { serveTestbedPower, type TestbedPower } from "../../testbed/power.js";
import { SitesBed } from "../../testbed/sites/bed.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { rejects } from "../helpers/assert.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";

const t = gate(test, ["root", "ip", "nft"], "the testbed power driver on a namespace site");
const dir = tempDir("vmhop-power-bed-");
let bed: SitesBed;
let power: TestbedPower;

t.before(async () => {
  await destroyStaleNetns("nr-pw-");
  bed = await SitesBed.start({
    prefix: uniqueNetnsPrefix("nr-pw-"),
    dir: dir.path,
    sites: 2,
    netreach: false,
  });
  power = await serveTestbedPower(
    join(dir.path, "h2-power.sock"),
    { off: () => bed.powerOffSite(2), on: () => bed.powerOnSite(2) },
    { bootDelayMs: 1500 },
  );
});

t.after(async () => {
  await power?.close();
  await bed?.stop();
  dir.cleanup();
});

const exited = (p: { child: { exitCode: number | null; signalCode: string | null } }) =>
  p.child.exitCode !== null || p.child.signalCode !== null;

t("off stops s2's block-server and page-server; on boots them again and waits for them", async () => {
  const s2 = bed.sites[1];
  const c = bed.client;
  await c.registerHost({
    hostId: s2.hostId,
    site: s2.site,
    pageServerAddress: s2.pageAddress,
    blockServerAddress: s2.blockAddress,
    blockNbdAddress: s2.nbdAddress,
    power: { driver: "testbed", params: { socket: power.socket } },
  });
  const blocks = new BlockServer(s2.blockAddress, 3000);
  await blocks.createTarget("kept", "", 1 << 20);
  const before = { block: s2.block, page: s2.page };

  assert.is((await c.powerHost("h2", "status")).state, "on");
  const off = await c.powerHost("h2", "off");
  assert.equal([off.state, off.host.asleep, off.host.powerState], ["off", true, "off"]);
  assert.ok(exited(before.block) && exited(before.page), "s2's services still run");
  await rejects(
    blocks.status("kept"),
    /block-server .* (unreachable|unavailable|UNAVAILABLE|No connection)/i,
  );
  assert.is((await c.powerHost("h2", "status")).state, "off");

  const on = await c.powerHost("h2", "on");
  assert.equal([on.state, on.host.asleep, on.host.powerState], ["on", false, "on"]);
  const after = bed.sites[1];
  assert.ok(after.page !== before.page && !exited(after.page) && !exited(after.block));
  assert.not.equal(after.page.child.pid, before.page.child.pid);
  // The same block-server state: the export made before the power cycle is served again (a new
  // client: the old one's channel still backs off from the host being down).
  blocks.close();
  const again = new BlockServer(s2.blockAddress, 30_000);
  assert.is((await again.status("kept")).export?.name, "kept");
  again.close();
  // Status polls between (off and on wait for the driver to report them).
  assert.equal(
    power.requests.filter((r) => r !== "status"),
    ["off", "on"],
  );
  assert.equal(
    on.host.powerActions.map((a) => [a.action, a.result]),
    [
      ["status", "on"],
      ["off", "off"],
      ["status", "off"],
      ["on", "on"],
    ],
  );
});

t.run();
