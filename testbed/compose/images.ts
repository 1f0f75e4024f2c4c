// The compose test bed's images, built locally (container registries may be unreachable) and
// cached: rebuilt only when their inputs changed.
//   base   Debian 13 (nodejs 20, QEMU, iproute2, nftables, redis) by mmdebstrap from the Debian
//          mirror, `podman import`ed; its tarball kept in the cache dir, the image labelled with
//          the hash of the package list (a changed list rebuilds it).
//   deps   node_modules: `npm ci --omit=dev` from the lock file, run here (the npm registry is
//          reachable from this machine, maybe not from a container; and Debian's npm would pull
//          python and a compiler into the base), kept per lock-file hash (deploy/deps.Dockerfile).
//   guest  the test guest's kernel and initrd (deploy/guest/Dockerfile; `vmhop guest build` first).
//   vmhop  deploy/Dockerfile on the three (podman's layer cache: only changed layers rebuild).
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, readFileSync, realpathSync, renameSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { guestArtefacts } from "../../deploy/guest/build/paths.js";
import { podman, repoRoot, run } from "./podman.js";

export const BASE_IMAGE = "localhost/vmhop-base:trixie";
export const GUEST_IMAGE = "localhost/vmhop-guest:dev";
export const DEPS_IMAGE = "localhost/vmhop-deps:dev";
export const VMHOP_IMAGE = "localhost/vmhop:dev";

/** What the services need in a container; the guest needs none of it. */
export const BASE_PACKAGES = [
  "nodejs",
  "ca-certificates",
  "qemu-system-x86",
  "iproute2",
  "nftables",
  "redis-server",
];
const SUITE = "trixie";

export const defaultCacheDir = process.env.VMHOP_CACHE_DIR ?? "/var/cache/vmhop";

export interface ImageOptions {
  cacheDir?: string;
  /** Build log (every command's output). */
  log: string;
  say?: (line: string) => void;
}

async function label(image: string, key: string): Promise<string | null> {
  const r = await podman(["image", "inspect", "--format", `{{index .Labels "${key}"}}`, image], {
    allowFail: true,
  });
  return r.code === 0 ? r.out.trim() : null;
}

/** The base image; mmdebstrap runs only when no tarball of this package list is cached. */
export async function ensureBaseImage(o: ImageOptions): Promise<void> {
  const say = o.say ?? (() => {});
  const hash = createHash("sha256")
    .update(`${SUITE}\n${BASE_PACKAGES.join("\n")}`)
    .digest("hex")
    .slice(0, 16);
  if ((await label(BASE_IMAGE, "vmhop.base")) === hash) return;
  const dir = join(o.cacheDir ?? defaultCacheDir, "base");
  mkdirSync(dir, { recursive: true });
  const tar = join(dir, `rootfs-${SUITE}-${hash}.tar`);
  if (!existsSync(tar)) {
    say(`base image: mmdebstrap ${SUITE} (${BASE_PACKAGES.join(", ")}) — a few minutes, once`);
    const part = `${tar}.part`;
    rmSync(part, { force: true });
    await run(
      "mmdebstrap",
      [
        "--variant=apt",
        "--format=tar",
        `--include=${BASE_PACKAGES.join(",")}`,
        '--aptopt=APT::Install-Recommends "false"',
        // Documentation and translations are dead weight in a service image.
        ...["doc", "man", "info", "locale"].map((d) => `--dpkgopt=path-exclude=/usr/share/${d}/*`),
        SUITE,
        part,
      ],
      { log: o.log },
    );
    renameSync(part, tar);
  }
  say(`base image: podman import ${tar}`);
  await podman(["import", "--change", `LABEL vmhop.base=${hash}`, tar, BASE_IMAGE], { log: o.log });
}

/** node_modules as an image, from `npm ci --omit=dev` of the lock file (redone when it changes). */
export async function ensureDepsImage(o: ImageOptions): Promise<void> {
  const lock = readFileSync(join(repoRoot, "package-lock.json"));
  const hash = createHash("sha256").update(lock).digest("hex").slice(0, 16);
  if ((await label(DEPS_IMAGE, "vmhop.deps")) === hash) return;
  const dir = join(o.cacheDir ?? defaultCacheDir, "deps", hash);
  if (!existsSync(join(dir, "node_modules", ".package-lock.json"))) {
    (o.say ?? (() => {}))("deps image: npm ci --omit=dev");
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    for (const f of ["package.json", "package-lock.json"]) copyFileSync(join(repoRoot, f), join(dir, f));
    await run("npm", ["ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"], {
      cwd: dir,
      log: o.log,
      env: process.env,
    });
  }
  await podman(
    [
      "build",
      "-q",
      "-f",
      join(repoRoot, "deploy/deps.Dockerfile"),
      "--label",
      `vmhop.deps=${hash}`,
      "-t",
      DEPS_IMAGE,
      dir,
    ],
    { log: o.log },
  );
}

/** The guest image from the built guest (deploy/guest/out, which may be a link elsewhere). */
export async function buildGuestImage(o: ImageOptions): Promise<void> {
  const out = dirname(realpathSync(guestArtefacts().kernel));
  await podman(["build", "-q", "-f", join(repoRoot, "deploy/guest/Dockerfile"), "-t", GUEST_IMAGE, out], {
    log: o.log,
  });
}

/** The vmhop image (no network needed: every input is local). */
export async function buildVmhopImage(o: ImageOptions): Promise<void> {
  await podman(
    [
      "build",
      "-f",
      join(repoRoot, "deploy/Dockerfile"),
      "--build-arg",
      `BASE=${BASE_IMAGE}`,
      "--build-arg",
      `DEPS=${DEPS_IMAGE}`,
      "--build-arg",
      `GUEST=${GUEST_IMAGE}`,
      "-t",
      VMHOP_IMAGE,
      repoRoot,
    ],
    { log: o.log },
  );
}

/** Every image, in order; each step cached as above. */
export async function ensureImages(o: ImageOptions): Promise<void> {
  await ensureBaseImage(o);
  await ensureDepsImage(o);
  await buildGuestImage(o);
  (o.say ?? (() => {}))("vmhop image: podman build (cached layers reused)");
  await buildVmhopImage(o);
}
