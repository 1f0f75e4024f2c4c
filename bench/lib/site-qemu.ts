// A QEMU started by hand inside a site's network namespace, the way an operator runs one without
// vmhop: the page-server's command line for the same VM spec (so guest, machine and accelerator
// match), but its disk a raw image file on the site's local storage (`-blockdev`, node `disk0`),
// which the page-server cannot do (its disks are NBD exports). Driven over the project's QMP
// client; the serial output goes to serial.log in its run folder.
import type { ChildProcess } from "node:child_process";
import { closeSync, mkdirSync, openSync } from "node:fs";
import { join } from "node:path";
import { QmpClient } from "../../services/page-server/qmp/client.js";
import { hostAccel } from "../../services/page-server/vm/accel.js";
import { buildQemuArgs, optValue, VIRTIO_BLK_GEOMETRY } from "../../services/page-server/vm/qemu-args.js";
import type { VmSpec } from "../../services/page-server/vm/spec.js";
import { spawnIn } from "../../testbed/netns.js";

/** The node name of the disk, for blockdev-mirror and the NBD export. */
export const DISK_NODE = "disk0";

export interface SiteQemuOptions {
  ns: string;
  runDir: string;
  /** No disk nor NIC here: the disk comes from `image`. */
  spec: Omit<VmSpec, "disk" | "nic">;
  image: string;
  /** Wait for `migrate-incoming` (-incoming defer). */
  incoming?: boolean;
}

export interface SiteQemu {
  qmp: QmpClient;
  serialLog: string;
  child: ChildProcess;
  /** SIGKILL and wait for the exit (nothing if it already ended). */
  kill(): Promise<void>;
}

export async function startSiteQemu(o: SiteQemuOptions): Promise<SiteQemu> {
  mkdirSync(o.runDir, { recursive: true });
  const paths = {
    qmpSocket: join(o.runDir, "qmp.sock"),
    serialSocket: join(o.runDir, "serial.sock"),
    serialLog: join(o.runDir, "serial.log"),
  };
  const args = [
    ...buildQemuArgs(o.spec, paths, hostAccel(), { incoming: o.incoming }),
    "-blockdev",
    `driver=raw,node-name=${DISK_NODE},file.driver=file,file.filename=${optValue(o.image)}`,
    "-device",
    `virtio-blk-pci,drive=${DISK_NODE},id=vd0,${VIRTIO_BLK_GEOMETRY}`,
  ];
  const log = openSync(join(o.runDir, "qemu.log"), "a");
  // `ip netns exec` execs QEMU itself: the child's pid is QEMU's.
  const child = spawnIn(o.ns, "qemu-system-x86_64", args, { stdio: ["ignore", log, log] });
  closeSync(log);
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    child.once("exit", () => resolve());
  });
  const kill = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
  };
  try {
    const qmp = await Promise.race([
      QmpClient.connect(paths.qmpSocket, { timeoutMs: 20_000 }),
      exited.then(() => {
        throw new Error(`QEMU in ${o.ns} ended during start-up (see ${join(o.runDir, "qemu.log")})`);
      }),
    ]);
    return { qmp, serialLog: paths.serialLog, child, kill };
  } catch (err) {
    await kill();
    throw err;
  }
}
