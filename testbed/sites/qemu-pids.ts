// The QEMU processes that run VMs in a site's namespace, told apart from the page-server's warm
// incoming QEMUs (started before any migration for the VM shapes it may receive; see
// services/page-server/vm/warm-pool.ts): a warm QEMU was started in the run folder's `.warm/`,
// and once a migration takes it, its pidfile moves into the VM's folder.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { netnsPids } from "../netns.js";
import type { SitesBed } from "./bed.js";

const read = (file: string) => {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return "";
  }
};

/** The page-server's run folder at site k (1-based). */
export function pageRunDir(bed: SitesBed, k: number): string {
  return join(bed.opts.dir, bed.sites[k - 1].site, "page");
}

/** Pids of the QEMUs at site k, split into those running (or receiving) a VM and warm ones. */
export async function siteQemus(bed: SitesBed, k: number): Promise<{ vms: number[]; warm: number[] }> {
  const root = pageRunDir(bed, k);
  let folders: string[] = [];
  try {
    folders = readdirSync(root).filter((f) => f !== ".warm");
  } catch {
    // no page-server run folder (yet)
  }
  const vmPids = new Set(folders.map((f) => Number(read(join(root, f, "qemu.pid")).trim())).filter(Boolean));
  const warmMark = join(root, ".warm") + "/";
  const out = { vms: [] as number[], warm: [] as number[] };
  for (const pid of await netnsPids(bed.sites[k - 1].ns)) {
    if (!read(`/proc/${pid}/comm`).startsWith("qemu-system")) continue;
    const warm = !vmPids.has(pid) && read(`/proc/${pid}/cmdline`).includes(warmMark);
    (warm ? out.warm : out.vms).push(pid);
  }
  return out;
}
