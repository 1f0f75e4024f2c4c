// The services' commands: `vmhop <service> …`, each service owning its subcommands in
// services/<service>/cli.ts (loaded lazily so one service's start-up cost stays its own).
// Test-bed and installation tools register apart (cli/tools.ts); cli/main.ts joins both.
import type { CommandTable } from "./dispatch.js";

export const serviceCommands: CommandTable = {
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
  control: {
    describe: "control-plane: hosts, VMs, migrations",
    load: () => import("../control-plane/cli.js"),
  },
  report: {
    describe: "a migration's timeline as one self-contained HTML page",
    load: () => import("../control-plane/report/cli.js"),
  },
  placement: { describe: "placement: simulate, policies, plan", load: () => import("../placement/cli.js") },
  netreach: { describe: "netreach: anchor and site agents", load: () => import("../netreach/cli.js") },
};
