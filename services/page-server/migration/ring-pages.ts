// The guest pages a post-copy destination faults on first: loading a virtio device reads its
// queues' avail and used indexes from guest memory, in QEMU's main thread, between the device
// state and POSTCOPY_RUN — one WAN round trip after another, with the VM stopped on both ends.
// The source asks for those pages itself right at the switch-over (ChannelOut.requestPages),
// so they follow the device state instead of waiting on its load.
//
// Where the rings are comes from QMP's x-query-virtio* (QEMU 7.0+). Guest-physical addresses
// map 1:1 onto the offset in "pc.ram" below 2 GiB on QEMU's pc and q35 machines (RAM above that
// may be relocated past 4 GiB); rings elsewhere are left to fault as before.
import type { PageRequest } from "../channel/return-path.js";
import type { QmpClient } from "../qmp/client.js";

export const GUEST_RAM_BLOCK = "pc.ram";
const PAGE = 4096;
/** Guest-physical addresses below this are `pc.ram` offsets on pc and q35. */
const IDENTITY_BELOW = 0x8000_0000;
/** A bound on what is asked for (each queue needs at most three pages). */
export const MAX_RING_PAGES = 96;

interface QueueStatus {
  "vring-desc": number;
  "vring-avail": number;
  "vring-used": number;
}

/**
 * The pages holding every live virtio queue's descriptor table start, avail ring and used
 * ring, as page requests in the guest's RAM block (at most MAX_RING_PAGES; RAM beyond
 * `memoryBytes` or above 2 GiB left out). Throws the QMP error if QEMU lacks x-query-virtio.
 */
export async function ringPages(qmp: QmpClient, memoryBytes: number): Promise<PageRequest[]> {
  // Each stage's commands go out together: QEMU answers them in turn, with no wait between.
  const devices = await qmp.execute<{ path: string }[]>("x-query-virtio");
  const counts = await Promise.all(
    devices.map((d) => qmp.execute<{ "num-vqs": number }>("x-query-virtio-status", { path: d.path })),
  );
  const queues = await Promise.all(
    devices.flatMap((d, i) =>
      Array.from({ length: counts[i]["num-vqs"] }, (_, queue) =>
        qmp.execute<QueueStatus>("x-query-virtio-queue-status", { path: d.path, queue }),
      ),
    ),
  );
  const pages = new Set<number>();
  for (const s of queues) {
    if (!s["vring-desc"]) continue; // a queue the driver never set up
    // The indexes the load reads sit 2 bytes into each ring.
    for (const a of [s["vring-desc"], s["vring-avail"] + 2, s["vring-used"] + 2]) {
      const page = a - (a % PAGE);
      if (page + PAGE <= Math.min(memoryBytes, IDENTITY_BELOW)) pages.add(page);
    }
  }
  return [...pages]
    .sort((a, b) => a - b)
    .slice(0, MAX_RING_PAGES)
    .map((start) => ({ block: GUEST_RAM_BLOCK, start, length: PAGE }));
}
