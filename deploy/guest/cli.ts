// `vmhop guest build [--out DIR] [--kernel-package PKG] [--force]`
import { parseArgs } from "node:util";
import { CliError } from "../../services/cli/errors.js";
import { buildGuest } from "./build/build.js";
import { defaultGuestOutDir } from "./build/paths.js";
import { GuestBuildError } from "./build/run.js";

const usage = `usage: vmhop guest build [--out DIR] [--kernel-package PKG] [--force]

Builds the test guest from Debian packages (apt-get download + dpkg -x): an ELF vmlinux,
a busybox initramfs with the virtio modules, and the static C workload.
Default output: ${defaultGuestOutDir}. Needs apt-get, dpkg, gcc, libc6-dev, xz-utils.`;

export async function run(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help") {
    console.log(usage);
    return cmd ? 0 : 2;
  }
  if (cmd !== "build") throw new CliError(`unknown guest command '${cmd}'\n\n${usage}`);
  let values: { out?: string; "kernel-package"?: string; force?: boolean };
  try {
    ({ values } = parseArgs({
      args: rest,
      options: { out: { type: "string" }, "kernel-package": { type: "string" }, force: { type: "boolean" } },
    }));
  } catch (err) {
    throw new CliError(`${(err as Error).message}\n\n${usage}`);
  }
  try {
    await buildGuest({ outDir: values.out, kernelPackage: values["kernel-package"], force: values.force });
  } catch (err) {
    if (err instanceof GuestBuildError) throw new CliError(`guest build failed: ${err.message}`, 1);
    throw err;
  }
  return 0;
}
