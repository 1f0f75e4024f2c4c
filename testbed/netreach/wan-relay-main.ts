// Child process run inside the WAN namespace: starts UDP delay relays (deploy/testbed's
// startUdpRelay) on request, and cuts or restores one. One JSON object per line on stdin, an
// answer per line on stdout:
//   {"id":1,"listen":"[fd01::2]:20001","peerA":"[fd01::1]:20001","target":"…","targetSideListen":"…","delayMs":15}
//   {"id":2,"cut":true,"listen":"[fd01::2]:20001"}   (false restores; `listen` names the relay)
//   → {"id":1,"ok":true}  or  {"id":1,"ok":false,"error":"…"}
import { createInterface } from "node:readline";
import { startUdpRelay, type UdpRelay } from "../relay-udp.js";

const relays = new Map<string, UdpRelay>();
const rl = createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  let id: unknown = null;
  try {
    const req = JSON.parse(line) as {
      id: number;
      cut?: boolean;
      listen: string;
      peerA: string;
      target: string;
      targetSideListen: string;
      delayMs: number;
      rateBitsPerSecond?: number;
    };
    id = req.id;
    if (req.cut !== undefined) {
      const r = relays.get(req.listen);
      if (!r) throw new Error(`no relay listens on ${req.listen}`);
      r.cut(req.cut);
    } else
      relays.set(
        req.listen,
        await startUdpRelay({
          listen: req.listen,
          peerA: req.peerA,
          target: req.target,
          targetSideListen: req.targetSideListen,
          delayMs: req.delayMs,
          rateBitsPerSecond: req.rateBitsPerSecond,
        }),
      );
    process.stdout.write(`${JSON.stringify({ id, ok: true })}\n`);
  } catch (err) {
    process.stdout.write(`${JSON.stringify({ id, ok: false, error: (err as Error).message })}\n`);
  }
});
// The parent closing stdin ends the relays.
rl.on("close", async () => {
  await Promise.all([...relays.values()].map((r) => r.close()));
  process.exit(0);
});
