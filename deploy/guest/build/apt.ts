// Debian packages for the guest: which kernel, fetch the .deb, unpack it (no root, no install).
import { readdirSync, renameSync } from "node:fs";
import { join } from "node:path";
import { GuestBuildError, run } from "./run.js";

const APT_HINT = "check network access and apt sources; try `apt-get update`";

/** The versioned kernel package the `linux-image-amd64` metapackage points at. */
export async function resolveKernelPackage(meta = "linux-image-amd64"): Promise<string> {
  const out = (await run("apt-cache", ["depends", meta], { hint: APT_HINT })).toString();
  const dep = /Depends:\s+(linux-image-[0-9][^\s]*)/.exec(out)?.[1];
  if (!dep) throw new GuestBuildError(`cannot tell which kernel ${meta} depends on (${APT_HINT})`);
  return dep;
}

/** Downloads `pkg` into `dir` and renames the .deb to `dest` (a path). */
export async function downloadDeb(pkg: string, dir: string, dest: string): Promise<void> {
  const before = new Set(readdirSync(dir));
  await run("apt-get", ["download", "-q", pkg], { cwd: dir, hint: APT_HINT });
  const name = pkg.replace(/[:=].*$/, "");
  const got = readdirSync(dir).find((f) => f.endsWith(".deb") && f.startsWith(`${name}_`) && !before.has(f));
  if (!got) throw new GuestBuildError(`apt-get download ${pkg} reported success but left no ${name}_*.deb`);
  renameSync(join(dir, got), dest);
}

export async function unpackDeb(deb: string, into: string): Promise<void> {
  await run("dpkg", ["-x", deb, into], { hint: "dpkg is part of every Debian system" });
}
