// `vmhop guest build`: a bootable test guest from Debian packages only — the kernel's ELF
// vmlinux (PVH boot), a busybox initramfs with the virtio modules, and the static workload.
import {
  copyFileSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { downloadDeb, resolveKernelPackage, unpackDeb } from "./apt.js";
import { defaultGuestOutDir, guestPaths, guestSourceDir } from "./paths.js";
import { GuestBuildError, run } from "./run.js";
import { fileKey, type Progress, runStep, type Step } from "./steps.js";
import { extractVmlinux } from "./vmlinux.js";

/** Loaded by /init in this order (dependencies first). */
export const GUEST_MODULES = [
  "virtio_ring",
  "virtio",
  "virtio_pci_modern_dev",
  "virtio_pci_legacy_dev",
  "virtio_pci",
  "virtio_blk",
  "failover",
  "net_failover",
  "virtio_net",
];

export interface BuildOptions {
  outDir?: string;
  /** A versioned kernel package; default: whatever linux-image-amd64 depends on. */
  kernelPackage?: string;
  force?: boolean;
  progress?: Progress;
}

function findFile(dir: string, match: (name: string) => boolean): string | undefined {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      const hit = findFile(p, match);
      if (hit) return hit;
    } else if (match(e.name)) return p;
  }
  return undefined;
}

export async function buildGuest(opts: BuildOptions = {}): Promise<{ built: string[] }> {
  const out = opts.outDir ?? defaultGuestOutDir;
  const progress = opts.progress ?? ((l: string) => console.log(`guest: ${l}`));
  const debs = join(out, "debs");
  const pkgs = join(out, "pkgs");
  mkdirSync(debs, { recursive: true });
  const kernelDeb = join(debs, "kernel.deb");
  const busyboxDeb = join(debs, "busybox.deb");
  const kernelDir = join(pkgs, "kernel");
  const busyboxDir = join(pkgs, "busybox");
  const busybox = join(busyboxDir, "bin", "busybox");
  const stage = join(out, "initramfs");
  const paths = guestPaths(out);
  const workloadSrc = join(guestSourceDir, "workload", "workload.c");
  const initScript = join(guestSourceDir, "init.sh");
  const vmlinuz = () => {
    const f = findFile(join(kernelDir, "boot"), (n) => n.startsWith("vmlinuz-"));
    if (!f) throw new GuestBuildError(`no boot/vmlinuz-* in ${kernelDir}`);
    return f;
  };
  const unpack = (deb: string, dir: string) => async () => {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    await unpackDeb(deb, dir);
    return undefined;
  };

  const steps: Step[] = [
    {
      name: "kernel package",
      outputs: [kernelDeb],
      key: () => opts.kernelPackage ?? "linux-image-amd64",
      make: async () => {
        const pkg = opts.kernelPackage ?? (await resolveKernelPackage());
        await downloadDeb(pkg, debs, kernelDeb);
        return pkg;
      },
    },
    {
      name: "busybox package",
      outputs: [busyboxDeb],
      key: () => "busybox-static",
      make: async () => {
        await downloadDeb("busybox-static", debs, busyboxDeb);
        return "busybox-static";
      },
    },
    {
      name: "unpack kernel",
      outputs: [kernelDir],
      key: () => fileKey(kernelDeb),
      make: unpack(kernelDeb, kernelDir),
    },
    {
      name: "unpack busybox",
      outputs: [busybox],
      key: () => fileKey(busyboxDeb),
      make: unpack(busyboxDeb, busyboxDir),
    },
    {
      name: "vmlinux",
      outputs: [paths.kernel],
      key: () => fileKey(vmlinuz()),
      make: async () => {
        const elf = await extractVmlinux(readFileSync(vmlinuz()));
        writeFileSync(paths.kernel, elf);
        return `${(elf.length / 2 ** 20).toFixed(1)} MiB ELF`;
      },
    },
    {
      name: "workload",
      outputs: [paths.workload],
      key: () => fileKey(workloadSrc),
      make: async () => {
        await run("gcc", ["-static", "-O2", "-Wall", "-Wextra", "-o", paths.workload, workloadSrc], {
          hint: "needs Debian packages gcc and libc6-dev",
        });
        return undefined;
      },
    },
    {
      name: "initramfs",
      outputs: [paths.initrd],
      key: () => `${fileKey(initScript, paths.workload, busybox, kernelDeb)}|${GUEST_MODULES.join(",")}`,
      make: async () => {
        rmSync(stage, { recursive: true, force: true });
        for (const d of [
          "bin",
          "sbin",
          "usr/bin",
          "usr/sbin",
          "etc",
          "lib/modules",
          "proc",
          "sys",
          "dev",
          "tmp",
        ])
          mkdirSync(join(stage, d), { recursive: true });
        copyFileSync(busybox, join(stage, "bin", "busybox"));
        symlinkSync("busybox", join(stage, "bin", "sh"));
        copyFileSync(paths.workload, join(stage, "bin", "vmhop-workload"));
        copyFileSync(initScript, join(stage, "init"));
        for (const m of GUEST_MODULES) {
          const ko = findFile(join(kernelDir, "lib", "modules"), (n) => n === `${m}.ko`);
          if (!ko) throw new GuestBuildError(`kernel module ${m}.ko not found in ${kernelDir}`);
          copyFileSync(ko, join(stage, "lib", "modules", `${m}.ko`));
        }
        writeFileSync(join(stage, "etc", "vmhop-modules"), `${GUEST_MODULES.join("\n")}\n`);
        await run("chmod", [
          "0755",
          join(stage, "init"),
          join(stage, "bin", "busybox"),
          join(stage, "bin", "vmhop-workload"),
        ]);
        const list = await run(busybox, ["find", "."], { cwd: stage });
        const cpio = await run(busybox, ["cpio", "-o", "-H", "newc"], { cwd: stage, input: list });
        writeFileSync(paths.initrd, cpio);
        return `${(cpio.length / 2 ** 20).toFixed(1)} MiB, ${GUEST_MODULES.length} modules`;
      },
    },
  ];

  const built: string[] = [];
  for (const s of steps)
    if ((await runStep(join(out, ".stamps"), s, { force: opts.force, progress })) === "built")
      built.push(s.name);
  progress(`ready: kernel ${paths.kernel}, initrd ${paths.initrd}`);
  return { built };
}
