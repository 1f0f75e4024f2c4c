// `vmhop <service> <command> …`: one entry point, each service owns its subcommands in
// services/<service>/cli.ts (loaded lazily so one service's start-up cost stays its own).
import { CliError } from "./errors.js";

type CliModule = { run(argv: string[]): Promise<number> };

const commands: Record<string, { describe: string; load: () => Promise<CliModule> }> = {
  up: {
    describe: "run the vmhop services on this machine (block-server, page-server, placement, control-plane)",
    load: () => import("./up.js"),
  },
  block: {
    describe: "NBD block-server: serve, status, cache-all, promote",
    load: () => import("../block-server/cli.js"),
  },
  page: {
    describe: "page-server: run VMs under QEMU, migrate memory",
    load: () => import("../page-server/cli.js"),
  },
  guest: {
    describe: "build the test guest (kernel, initramfs, workload)",
    load: () => import("../page-server/guest-cli.js"),
  },
  control: {
    describe: "control-plane: hosts, VMs, migrations",
    load: () => import("../control-plane/cli.js"),
  },
  placement: { describe: "placement: simulate, policies, plan", load: () => import("../placement/cli.js") },
  testbed: {
    describe: "test-bed tools: WAN relay (delay + rate cap)",
    load: () => import("../../deploy/testbed/cli.js"),
  },
  netreach: { describe: "netreach: anchor and site agents", load: () => import("../netreach/cli.js") },
};

function usage(): string {
  const lines = Object.entries(commands).map(([k, v]) => `  ${k.padEnd(10)} ${v.describe}`);
  return `usage: vmhop <command> [args]\n\ncommands:\n${lines.join("\n")}\n\nRun 'vmhop <command> --help' for details.`;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help") {
    console.log(usage());
    return cmd ? 0 : 2;
  }
  const entry = commands[cmd];
  if (!entry) {
    console.error(`vmhop: unknown command '${cmd}'\n\n${usage()}`);
    return 2;
  }
  let mod: CliModule;
  try {
    mod = await entry.load();
  } catch (err) {
    if ((err as { code?: string }).code === "ERR_MODULE_NOT_FOUND") {
      console.error(`vmhop: '${cmd}' is not implemented yet`);
      return 2;
    }
    throw err;
  }
  return mod.run(rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof CliError) {
      console.error(`vmhop: ${err.message}`);
      process.exitCode = err.exitCode;
    } else {
      console.error(err);
      process.exitCode = 1;
    }
  },
);
