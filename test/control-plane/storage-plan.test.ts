// Where a migrating VM's disk goes: LAZY when it is an export of the source's block-server,
// SHARED otherwise; LAZY asked for where it cannot work is refused with the reason.
import * as assert from "uvu/assert";
import { StorageMode } from "../../gen/vmhop/v1/control.js";
import type { HostRecord } from "../../services/control-plane/records.js";
import { diskUrlAt, parseNbdUrl, planStorage } from "../../services/control-plane/storage-plan.js";
import { test } from "../helpers/uvu.js";

const host = (id: string, nbd: string, grpc = "127.0.0.1:1"): HostRecord => ({
  host_id: id,
  site: "",
  page_server_address: "127.0.0.1:2",
  block_server_address: nbd ? grpc : "",
  block_nbd_address: nbd,
  cpus: 2,
  memory_mib: 4096,
  asleep: false,
});
const A = host("a", "10.0.0.1:10809");
const B = host("b", "10.0.0.2:10809");
const URL_A = "nbd://10.0.0.1:10809/disk0";
const { STORAGE_MODE_UNSPECIFIED: ANY, STORAGE_MODE_LAZY: LAZY, STORAGE_MODE_SHARED: SHARED } = StorageMode;

test("nbd URLs: address and export name, anything else null", () => {
  assert.equal(parseNbdUrl(URL_A), { address: "10.0.0.1:10809", name: "disk0" });
  assert.equal(parseNbdUrl("nbd://[fd00::1]:10809/vm%201"), { address: "[fd00::1]:10809", name: "vm 1" });
  assert.is(parseNbdUrl("nbd+unix:///disk0?socket=/tmp/s"), null);
  assert.is(parseNbdUrl("/var/lib/disk.raw"), null);
  assert.is(parseNbdUrl("nbd://10.0.0.1:10809/"), null);
});

test("default: LAZY for a disk on the source's block-server, the same export name at the destination", () => {
  const p = planStorage(ANY, URL_A, A, B);
  assert.is(p.storage, LAZY);
  assert.is(p.disk?.destination_export, "disk0");
  assert.is(p.disk?.source_url, URL_A);
  assert.is(p.disk?.promoted, false);
  assert.is(diskUrlAt(p.disk, B, URL_A), "nbd://10.0.0.2:10809/disk0");
});

test("default: SHARED without a disk, for a disk elsewhere, or without block-servers; SHARED keeps the URL", () => {
  assert.is(planStorage(ANY, "", A, B).storage, SHARED);
  assert.is(planStorage(ANY, "nbd://10.9.9.9:10809/disk0", A, B).storage, SHARED);
  assert.is(planStorage(ANY, URL_A, A, host("b", "")).storage, SHARED);
  const shared = planStorage(SHARED, URL_A, A, B);
  assert.is(shared.storage, SHARED);
  assert.is(shared.disk, undefined);
  assert.is(diskUrlAt(shared.disk, B, URL_A), URL_A);
});

test("LAZY asked for where it cannot work: refused, naming why", () => {
  assert.throws(() => planStorage(LAZY, "", A, B), /storage LAZY: the VM has no disk/);
  assert.throws(
    () => planStorage(LAZY, "nbd://10.9.9.9:10809/disk0", A, B),
    /not on source host a's block-server \(10\.0\.0\.1:10809\)/,
  );
  assert.throws(() => planStorage(LAZY, URL_A, A, host("b", "")), /destination host b has no block-server/);
  assert.throws(() => planStorage(LAZY, URL_A, host("a", ""), B), /source host a has no block-server/);
});

test.run();
