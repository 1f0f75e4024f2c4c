// A TCP echo connection from the correspondent to a home address, kept busy while the VM
// moves: it must neither break nor lose or reorder anything.
import * as assert from "uvu/assert";
import type { TcpProbeResult } from "../../services/netreach/probe/tcp-probe.js";
import type { HandoverMode, NetreachBed } from "../../testbed/netreach/bed.js";
import { startProbe } from "../../testbed/netreach/probe-process.js";

export interface TcpMove {
  /** Home address to connect to. */
  to: string;
  port: number;
  /** Echoes sent, 10 ms apart. */
  count: number;
  /** Echoing before the move starts. */
  leadMs: number;
  /** Site index to move to. */
  site: number;
  mode: HandoverMode;
}

export async function assertTcpSurvivesMove(bed: NetreachBed, o: TcpMove): Promise<void> {
  const server = startProbe<never>(bed.ns.vm, ["tcp-echo", "--port", String(o.port)]);
  try {
    await server.ready;
    const client = startProbe<TcpProbeResult>(bed.ns.cn, [
      "tcp-client",
      "--to",
      o.to,
      "--port",
      String(o.port),
      "--count",
      String(o.count),
      "--interval-ms",
      "10",
    ]);
    await client.ready;
    await new Promise((r) => setTimeout(r, o.leadMs));
    assert.ok((await bed.move(o.site, o.mode)).outcome.accepted);
    const r = await client.result;
    await bed.settle();
    assert.is(r.broken, false, JSON.stringify(r));
    assert.is(r.echoed, o.count);
    assert.ok(r.inOrder);
  } finally {
    server.kill();
  }
}
