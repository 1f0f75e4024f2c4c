// A disk both QEMUs of a migration hold at once (as the block-servers do in turn): a 16 MiB raw
// image served by qemu-nbd --shared, for the page-server's migration tests.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { truncateSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { freePort } from "../../testbed/ports.js";

export interface SharedDisk {
  /** nbd://127.0.0.1:PORT/d */
  url: string;
  stop(): Promise<void>;
}

/** The image in `dir`, served once qemu-nbd accepts connections. */
export async function sharedNbdDisk(dir: string): Promise<SharedDisk> {
  const image = join(dir, "disk.raw");
  writeFileSync(image, Buffer.alloc(0));
  truncateSync(image, 16 << 20);
  const port = await freePort();
  const nbd = spawn(
    "qemu-nbd",
    ["-f", "raw", "-b", "127.0.0.1", "-p", String(port), "-x", "d", "-t", "--shared=4", image],
    { stdio: "ignore" },
  );
  const stop = async () => {
    if (nbd.exitCode !== null || nbd.signalCode !== null) return;
    nbd.kill("SIGKILL");
    await once(nbd, "exit");
  };
  try {
    await listening(port);
  } catch (err) {
    await stop();
    throw err;
  }
  return { url: `nbd://127.0.0.1:${port}/d`, stop };
}

async function listening(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`qemu-nbd does not listen on ${port}`);
}
