// Reading a whole export with a stock client, timed: `nbdcopy URI null:` or
// `qemu-img convert` to a null target.
import { execFile } from "node:child_process";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";

const run = promisify(execFile);

export type Client = "nbdcopy" | "qemu-img";

/** Reads all `size` bytes of `uri`; returns MiB/s (wall time, including the client's start). */
export async function readAll(client: Client, uri: string, size: number): Promise<number> {
  const t0 = performance.now();
  if (client === "nbdcopy") await run("nbdcopy", [uri, "null:"], { timeout: 600_000 });
  else
    await run(
      "qemu-img",
      ["convert", "-n", "-f", "raw", uri, "--target-image-opts", `driver=null-co,size=${size}`],
      { timeout: 600_000 },
    );
  return size / (1 << 20) / ((performance.now() - t0) / 1000);
}
