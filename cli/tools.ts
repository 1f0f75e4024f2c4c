// The tools' commands: test beds and installation helpers, registered apart from the services
// (services never import them).
import type { CommandTable } from "../services/cli/dispatch.js";

export const toolCommands: CommandTable = {
  demo: {
    describe: "the main job: a whole VM (disk, memory, address) moves between two sites over a WAN (root)",
    load: () => import("../testbed/sites/demo.js"),
  },
  guest: {
    describe: "build the test guest (kernel, initramfs, workload)",
    load: () => import("../deploy/guest/cli.js"),
  },
  testbed: {
    describe: "test-bed tools: WAN relay (delay + rate cap)",
    load: () => import("../testbed/cli.js"),
  },
  "netreach demo": {
    describe: "move a VM between sites of a namespace test bed under a 10 ms ping (root)",
    load: () => import("../testbed/netreach/demo.js"),
  },
};
