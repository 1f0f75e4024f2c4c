// Where a migrating VM's disk goes (pure). LAZY: the disk is an export of the source host's
// block-server, so the destination's block-server serves it at once as a proxy of that export
// (same export name) and the VM's disk URL becomes the destination's; SHARED: the disk stays
// where it is and the destination opens the same URL.
import { StorageMode } from "../../gen/vmhop/v1/control.js";
import type { DiskRecord, HostRecord } from "./records.js";

export interface StoragePlan {
  storage: StorageMode.STORAGE_MODE_LAZY | StorageMode.STORAGE_MODE_SHARED;
  disk?: DiskRecord;
}

export class StoragePlanError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StoragePlanError";
  }
}

/** Host:port and export name of an `nbd://HOST:PORT/NAME` URL, or null for anything else. */
export function parseNbdUrl(url: string): { address: string; name: string } | null {
  const m = /^nbd:\/\/([^/]+)\/([^/?#]+)$/.exec(url);
  return m ? { address: m[1], name: decodeURIComponent(m[2]) } : null;
}

/** The disk URL the VM uses once it runs at `dst`: its relocated disk's (LAZY), else the same. */
export function diskUrlAt(disk: DiskRecord | undefined, dst: HostRecord, current: string): string {
  return disk ? `nbd://${dst.block_nbd_address}/${encodeURIComponent(disk.destination_export)}` : current;
}

/**
 * The storage of a migration of a VM whose disk is `diskUrl` from `src` to `dst`. Unspecified
 * chooses LAZY when the disk is an export of the source's block-server, else SHARED (also for a
 * VM without a disk). LAZY asked for where it cannot work is refused with the reason.
 */
export function planStorage(
  want: StorageMode,
  diskUrl: string,
  src: HostRecord,
  dst: HostRecord,
): StoragePlan {
  const shared = { storage: StorageMode.STORAGE_MODE_SHARED } as const;
  if (want === StorageMode.STORAGE_MODE_SHARED) return shared;
  const why = lazyRefusal(diskUrl, src, dst);
  if (why) {
    if (want === StorageMode.STORAGE_MODE_LAZY) throw new StoragePlanError(`storage LAZY: ${why}`);
    return shared;
  }
  const name = parseNbdUrl(diskUrl)!.name;
  return {
    storage: StorageMode.STORAGE_MODE_LAZY,
    disk: {
      destination_export: name,
      source_url: diskUrl,
      blocks_total: 0,
      blocks_local: 0,
      bytes_fetched_on_demand: 0,
      bytes_fetched_background: 0,
      promoted: false,
    },
  };
}

function lazyRefusal(diskUrl: string, src: HostRecord, dst: HostRecord): string | null {
  if (!diskUrl) return "the VM has no disk";
  const u = parseNbdUrl(diskUrl);
  if (!u) return `the VM's disk ${diskUrl} is not an nbd://HOST:PORT/NAME URL`;
  if (!src.block_server_address || !src.block_nbd_address)
    return `source host ${src.host_id} has no block-server registered`;
  if (u.address !== src.block_nbd_address)
    return `the VM's disk ${diskUrl} is not on source host ${src.host_id}'s block-server (${src.block_nbd_address})`;
  if (!dst.block_server_address || !dst.block_nbd_address)
    return `destination host ${dst.host_id} has no block-server registered`;
  return null;
}
