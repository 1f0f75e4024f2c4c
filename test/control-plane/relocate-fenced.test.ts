// A relocation whose export a newer migration of the VM took over: real block-servers
// (`vmhop block serve`) and a control-plane resuming a migration recorded as relocating. The VM
// went A→B (migration m-1, token 1), moved on and came back to B (token 3) before m-1 went on:
// B's disk0 is the newer migration's now, a proxy of another host's copy. m-1's calls on it are
// refused as stale, so m-1 releases its source (A's export) and ends `done`, leaving B's export
// as it was, instead of failing or touching it.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import { ExportMode } from "../../gen/vmhop/v1/block.js";
import { call } from "../../services/common/grpc/call.js";
import { MemoryStore } from "../../services/common/store/index.js";
import {
  type HostRecord,
  KEYS,
  type MigrationRecord,
  type VmRecord,
} from "../../services/control-plane/records.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { blockClient, killAll, serve } from "../block-server/fixtures/serve-process.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { until, within } from "../helpers/wait.js";
import { type ControlPlaneHandle, startControlPlane } from "./fixtures.js";

const t = gate(test, [], "relocation taken over by a newer migration");
const dir = tempDir("vmhop-relocate-fenced-");
const closers: (() => Promise<void> | void)[] = [];
t.after(async () => {
  for (const c of closers.reverse()) await c();
  killAll();
  dir.cleanup();
});

async function blockServer(name: string) {
  const s = serve(["--listen", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--state-dir", join(dir.path, name)]);
  closers.push(() => s.stop());
  const r = await within(s.ready, 30_000, `block-server ${name}'s ready line`);
  const client = blockClient(r.grpc!);
  closers.push(() => client.close());
  return { client, grpc: r.grpc!, nbd: r.nbd[0] };
}

const status = async (c: ReturnType<typeof blockClient>, name: string) =>
  (await call(c, "getExportStatus", { name })).status!;

t(
  "m-1's calls on an export a newer migration took over are refused: it releases its source and ends",
  async () => {
    const image = join(dir.path, "disk0.raw");
    writeFileSync(image, Buffer.alloc(4 << 20, 7));
    const [a, b, c] = [await blockServer("a"), await blockServer("b"), await blockServer("c")];
    const target = (s: typeof a, imagePath: string) =>
      call(s.client, "createExport", {
        name: "disk0",
        source: { $case: "target", value: { imagePath, sizeBytes: 0 } },
        readOnly: false,
        description: "",
        fencingToken: 0,
      });
    await target(a, image); // m-1's source
    await target(c, join(dir.path, "disk0.raw")); // where the VM's disk went since (read-only here)
    // The migration with token 3 brought the VM back to B: B's disk0 is its proxy of C's.
    await call(b.client, "createExport", {
      name: "disk0",
      source: {
        $case: "proxy",
        value: {
          upstreamUrl: `nbd://${c.nbd}/disk0`,
          cachePath: "",
          blockSize: 0,
          startBackgroundCopy: false,
          rateLimitBytesPerSecond: 12345,
          upstreamControl: "",
          autoPromote: false,
        },
      },
      readOnly: false,
      description: "",
      fencingToken: 3,
    });

    const store = new MemoryStore();
    const hostRec = (id: string, s: typeof a): HostRecord => ({
      host_id: id,
      site: "",
      page_server_address: "127.0.0.1:1", // relocating calls no page-server
      block_server_address: s.grpc,
      block_nbd_address: s.nbd,
      cpus: 2,
      memory_mib: 4096,
      asleep: false,
    });
    await store.set(KEYS.host("a"), JSON.stringify(hostRec("a", a)));
    await store.set(KEYS.host("b"), JSON.stringify(hostRec("b", b)));
    const vm: VmRecord = {
      vm_id: "vm1",
      spec: { vmId: "vm1", diskNbdUrl: `nbd://${b.nbd}/disk0` },
      host_id: "b",
      migration_id: "",
      fencing_token: 3,
    };
    await store.set(KEYS.vm("vm1"), JSON.stringify(vm));
    const m1: MigrationRecord = {
      migration_id: "m-1",
      request_id: "",
      vm_id: "vm1",
      source_host_id: "a",
      destination_host_id: "b",
      mode: 0,
      state: "relocating",
      fencing_token: 1,
      error: "",
      bytes_sent: 0,
      downtime_ms: 0,
      created_unix_ms: Date.now(),
      updated_unix_ms: Date.now(),
      storage: 1,
      disk: {
        destination_export: "disk0",
        source_url: `nbd://${a.nbd}/disk0`,
        blocks_total: 0,
        blocks_local: 0,
        bytes_fetched_on_demand: 0,
        bytes_fetched_background: 0,
        promoted: false,
      },
    };
    await store.set(KEYS.migration("m-1"), JSON.stringify(m1));

    const cp: ControlPlaneHandle = await startControlPlane(store, { diskPollMs: 50 });
    closers.push(() => cp.close());
    const end = await until(
      "m-1 to end",
      async () => {
        const m = await cp.client.getMigration("m-1");
        return ["done", "failed"].includes(m.state) ? m : undefined;
      },
      60_000,
      100,
    );
    assert.is(end.state, "done", end.error);
    assert.not.ok(end.disk?.promoted, "m-1 promoted nothing");
    // B's export is the newer migration's, untouched: still a proxy of C's, its rate as set.
    const atB = await status(b.client, "disk0");
    assert.is(atB.export?.mode, ExportMode.EXPORT_MODE_PROXY);
    assert.is(atB.export?.upstreamUrl, `nbd://${c.nbd}/disk0`);
    assert.is(atB.backgroundCopy?.rateLimitBytesPerSecond, 12345);
    assert.not.ok(atB.backgroundCopy?.running, "m-1 started no copy there");
    // m-1's source is released.
    const gone = await status(a.client, "disk0").then(
      () => undefined,
      (e: grpc.ServiceError) => e,
    );
    assert.is(gone?.code, grpc.status.NOT_FOUND, "A's export released");
  },
);

t.run();
