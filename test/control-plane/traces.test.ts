// One trace per migration, across processes: the two-site namespace bed (testbed/sites: block-
// server, page-server and netreach site agent per site, the anchor, a control-plane with
// --netreach) with every service exporting its spans over OTLP/gRPC to a receiver of the test's
// (on a unix socket, reached from the site namespaces too). The test guest is created at s1 with
// home addresses and its disk on s1's block-server, then moved to s2 with one MigrateVm. The
// migration's spans are one trace: its root is the control-plane's migration span, the phases
// are its children, and every page-server, block-server and netreach anchor span in it is a
// child of a phase (the site agents' spans children of the anchor's). CreateVm is one trace too.
import { join } from "node:path";
import * as assert from "uvu/assert";
import type { VmSpec } from "../../gen/vmhop/v1/page.js";
import { ATTR } from "../../services/control-plane/migration-trace.js";
import { destroyStaleNetns, uniqueNetnsPrefix } from "../../testbed/netns.js";
import { VM } from "../../testbed/netreach/bed.js";
import { formatTree, OtlpReceiver, type ReceivedSpan } from "../../testbed/otlp/receiver.js";
import { SitesBed } from "../../testbed/sites/bed.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { heartbeats } from "../helpers/heartbeats.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import { ensureGuest } from "../page-server/guest.js";
import { migrationEnd } from "./fixtures.js";
import { homeGuestSpec } from "./home-guest.js";

const t = gate(
  test,
  ["qemu-system-x86_64", "gcc", "apt-get", "root", "ip", "nft"],
  "one trace per migration across the services",
);
const PREFIX = uniqueNetnsPrefix("nr-tr-");
const dir = tempDir("vmhop-traces-");
const DISK_MIB = 32;
const SERVER = 2; // OTLP SpanKind

let receiver: OtlpReceiver;
let bed: SitesBed;
let spec: VmSpec;

t.before(async () => {
  await destroyStaleNetns("nr-tr-");
  const guest = await ensureGuest();
  receiver = await OtlpReceiver.start(`unix:${join(dir.path, "otlp.sock")}`);
  // Every service the bed starts inherits these: export to the receiver, in batches 200 ms apart.
  process.env.OTEL_EXPORTER_OTLP_ENDPOINT = receiver.endpoint;
  process.env.OTEL_BSP_SCHEDULE_DELAY = "200";
  bed = await SitesBed.start({ prefix: PREFIX, dir: dir.path, sites: 2 });
  spec = await homeGuestSpec(bed, dir.path, guest, { diskMib: DISK_MIB, tap: "vmtap0" });
});

t.after(async () => {
  await bed?.stop();
  await receiver?.close();
  delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
  delete process.env.OTEL_BSP_SCHEDULE_DELAY;
  dir.cleanup();
});

const byId = (spans: ReceivedSpan[]) => new Map(spans.map((s) => [s.spanId, s]));

t("CreateVm is one trace: the page-server's and netreach's spans under the control-plane's", async () => {
  await bed.client.createVm(spec, "h1", { homeIpv6: VM.homeIpv6, homeIpv4: VM.homeIpv4 });
  const create = await until(
    "the create VM span at the receiver",
    () => receiver.spans.find((s) => s.name === "create VM" && s.attributes[ATTR.vm] === VM.vmId),
    30_000,
    100,
  );
  const want = [
    "vmhop.v1.PageService/DefineVm",
    "vmhop.v1.PageService/StartVm",
    "vmhop.v1.NetReachService/PlaceVm",
  ];
  const spans = await until(
    "the create's remote spans",
    () => {
      const all = receiver.trace(create.traceId);
      return want.every((n) => all.some((s) => s.name === n)) ? all : undefined;
    },
    30_000,
    100,
  );
  const tree = formatTree(spans);
  const ids = byId(spans);
  assert.is(ids.get(create.parentSpanId)?.name, "vmhop.v1.ControlPlaneService/CreateVm", tree);
  for (const n of want) {
    const s = spans.find((x) => x.name === n)!;
    assert.is(s.parentSpanId, create.spanId, `${n} under create VM\n${tree}`);
  }
});

t(
  "one MigrateVm is one trace: the migration span its root, the phases its children, the services' spans theirs",
  async () => {
    const log = (await bed.client.getVm(VM.vmId)).vm!.serialLogPath;
    await until("the guest's first heartbeat", () => heartbeats(log).at(0), 180_000);
    const m = await bed.client.migrateVm({ vmId: VM.vmId, destinationHostId: "h2" });
    const end = await migrationEnd(bed.client, m.migrationId, 300_000);
    assert.is(end.state, "done", end.error);

    // The migration span ends last (with the driver): once it is here, so is the rest.
    const root = await until(
      "the migration span at the receiver",
      () =>
        receiver.spans.find((s) => s.name === "migration" && s.attributes[ATTR.migration] === m.migrationId),
      30_000,
      100,
    );
    const spans = await until(
      "every service's spans in the migration's trace",
      () => {
        const all = receiver.trace(root.traceId);
        const services = new Set(all.map((s) => s.service));
        const every = ["control-plane", "page-server", "block-server", "netreach-anchor", "netreach-site"];
        return every.every((x) => services.has(x)) ? all : undefined;
      },
      30_000,
      100,
    );
    const tree = formatTree(spans);
    console.log(tree);
    const ids = byId(spans);

    // The root and what it says.
    assert.is(root.parentSpanId, "", `the migration span is the root\n${tree}`);
    assert.is(root.service, "control-plane");
    assert.equal(
      [ATTR.vm, ATTR.from, ATTR.to, ATTR.storage, ATTR.mode, ATTR.handover, ATTR.state].map(
        (k) => root.attributes[k],
      ),
      [VM.vmId, "h1", "h2", "lazy", "postcopy", "default", "done"],
    );
    const request = receiver.spans.find((s) => s.spanId === root.links[0]?.spanId);
    assert.is(request?.name, "vmhop.v1.ControlPlaneService/MigrateVm", "linked to the MigrateVm call");
    assert.equal(
      spans.filter((s) => s.parentSpanId === "").map((s) => s.name),
      ["migration"],
      `one root\n${tree}`,
    );

    // The phases, in order, under the root; the network steps beside them.
    const phases = spans.filter((s) => s.parentSpanId === root.spanId);
    const inOrder = [...phases]
      .filter((s) => s.attributes[ATTR.phase])
      .sort((a, b) => (BigInt(a.startNs) < BigInt(b.startNs) ? -1 : 1))
      .map((s) => s.name);
    assert.equal(
      inOrder,
      ["pending", "preparing", "migrating", "switched", "completing", "relocating"],
      tree,
    );
    for (const step of ["network prepare", "network switch-over", "network settle"])
      assert.ok(
        phases.some((s) => s.name === step),
        `${step} under the migration\n${tree}`,
      );
    const phaseIds = new Set(phases.map((s) => s.spanId));

    // Every remote span in the trace is a server span with its parent in the trace; those the
    // control-plane called are under a phase (the site agents' are under the anchor's).
    const remote = spans.filter((s) => s.service !== "control-plane");
    for (const s of remote) {
      const parent = ids.get(s.parentSpanId);
      assert.is(s.kind, SERVER, s.name);
      assert.ok(parent, `${s.service} ${s.name}: its parent is in the trace\n${tree}`);
      if (parent?.service === "control-plane")
        assert.ok(phaseIds.has(s.parentSpanId), `${s.service} ${s.name} under ${parent?.name}\n${tree}`);
    }
    const under = (phase: string, service: string, name: string) => {
      const p = phases.find((x) => x.name === phase)!;
      assert.ok(
        remote.some((s) => s.parentSpanId === p.spanId && s.service === service && s.name.endsWith(name)),
        `${service} ${name} under ${phase}\n${tree}`,
      );
    };
    under("preparing", "block-server", "/CreateExport");
    under("preparing", "page-server", "/PrepareIncoming");
    under("migrating", "page-server", "/StartMigration");
    under("relocating", "block-server", "/Promote");
    under("network prepare", "netreach-anchor", "/PrepareNetwork");
    under("network switch-over", "netreach-anchor", "/SwitchOver");
    assert.ok(
      spans.every((s) => s.status.code !== 2),
      `no span failed\n${tree}`,
    );
  },
);

t.run();
