// A delaying WAN for the netreach test bed: every router link is a VXLAN whose UDP crosses a
// userspace delay relay (netem is absent). The relays run in one child process inside a WAN
// namespace joined to each router by an underlay veth (`ul`, fd01:0:0:K::1 at the router,
// ::2 on the WAN side). Link L uses UDP port 20000+L on both ends.
import type { ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { addAddress, createNetns, createVeth, destroyNetns, ip, runIn, spawnIn } from "../netns.js";
import type { WanEnd, WanLinker } from "./bed.js";
import { PRIORITY } from "./probe-process.js";

const repoRoot = new URL("../../", import.meta.url).pathname;
const relayMain = new URL("./wan-relay-main.ts", import.meta.url).pathname;

export interface RelayedWanOptions {
  /** Namespace for the relays; created on first use, deleted by close(). */
  netns: string;
  delayMs: number;
  rateBitsPerSecond?: number;
}

export interface RelayedWan {
  linker: WanLinker;
  /** Cuts the link between the routers in namespaces `a` and `b` (both directions), or restores it. */
  cut(a: string, b: string, on: boolean): Promise<void>;
  close(): Promise<void>;
}

export function relayedWan(opts: RelayedWanOptions): RelayedWan {
  if (!(opts.delayMs >= 0)) throw new Error(`delay must be >= 0 ms, got ${opts.delayMs}`);
  const routers = new Map<string, number>();
  let child: ChildProcess | undefined;
  let nextId = 0;
  let links = 0;
  /** Each link's relay (its listen address), by its routers' namespaces "a b" and "b a". */
  const relayOf = new Map<string, string>();
  const waiting = new Map<number, (r: { ok: boolean; error?: string }) => void>();

  const start = async () => {
    // No DAD: the relay binds the underlay addresses right after they are added.
    await createNetns(opts.netns, {
      sysctls: { "net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0" },
    });
    // The emulated WAN runs at raised priority: a link's delay should not grow with CPU load.
    child = spawnIn(opts.netns, "nice", ["-n", PRIORITY, process.execPath, "--import", "tsx", relayMain], {
      cwd: repoRoot,
      stdio: ["pipe", "pipe", "inherit"],
    });
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const r = JSON.parse(line) as { id: number; ok: boolean; error?: string };
      waiting.get(r.id)?.(r);
      waiting.delete(r.id);
    });
    child.on("exit", (code) => {
      for (const w of waiting.values()) w({ ok: false, error: `relay process exited (${code})` });
      waiting.clear();
    });
  };

  const request = (req: Record<string, unknown>) =>
    new Promise<void>((resolve, reject) => {
      const id = ++nextId;
      waiting.set(id, (r) => (r.ok ? resolve() : reject(new Error(`relay: ${r.error}`))));
      child!.stdin!.write(`${JSON.stringify({ id, ...req })}\n`);
    });

  /** The router's underlay index, creating its underlay link on first sight. */
  const underlay = async (ns: string): Promise<number> => {
    let k = routers.get(ns);
    if (k !== undefined) return k;
    k = routers.size + 1; // from 1: fd01:0:0:K::1 is then the canonical text the relay compares
    routers.set(ns, k);
    await createVeth({ ns, name: "ul" }, { ns: opts.netns, name: `u${k}` });
    await ip(ns, "link", "set", "ul", "mtu", "9000");
    await ip(opts.netns, "link", "set", `u${k}`, "mtu", "9000");
    // Checksums are finished before a packet enters the relay: a userspace relay copies payloads,
    // so an inner checksum left to offload (a tunnel inside the link's VXLAN, a veth's TCP)
    // would cross unfinished and be dropped at the far end, as no real WAN would do to it.
    await runIn(ns, "ethtool", ["-K", "ul", "tx", "off"]);
    await addAddress(ns, "ul", `fd01:0:0:${k}::1/64`, { noDad: true });
    await addAddress(opts.netns, `u${k}`, `fd01:0:0:${k}::2/64`, { noDad: true });
    return k;
  };

  const vxlan = async (end: WanEnd, k: number, vni: number, port: number) => {
    await ip(
      end.ns,
      "link",
      "add",
      end.dev,
      "type",
      "vxlan",
      "id",
      String(vni),
      "local",
      `fd01:0:0:${k}::1`,
      "remote",
      `fd01:0:0:${k}::2`,
      "dstport",
      String(port),
      "dev",
      "ul",
    );
    await addAddress(end.ns, end.dev, end.addr6);
    await ip(end.ns, "link", "set", end.dev, "up");
  };

  const linker: WanLinker = async (a, b) => {
    if (!child) await start();
    const ka = await underlay(a.ns);
    const kb = await underlay(b.ns);
    const l = ++links;
    const port = 20000 + l;
    const listen = `[fd01:0:0:${ka}::2]:${port}`;
    await request({
      listen,
      peerA: `[fd01:0:0:${ka}::1]:${port}`,
      target: `[fd01:0:0:${kb}::1]:${port}`,
      targetSideListen: `[fd01:0:0:${kb}::2]:${port}`,
      delayMs: opts.delayMs,
      rateBitsPerSecond: opts.rateBitsPerSecond,
    });
    await vxlan(a, ka, l, port);
    await vxlan(b, kb, l, port);
    relayOf.set(`${a.ns} ${b.ns}`, listen);
    relayOf.set(`${b.ns} ${a.ns}`, listen);
    return async () => {};
  };

  return {
    linker,
    cut: async (a, b, on) => {
      const listen = relayOf.get(`${a} ${b}`);
      if (!listen || !child) throw new Error(`no relayed WAN link between ${a} and ${b}`);
      await request({ cut: on, listen });
    },
    close: async () => {
      if (child && child.exitCode === null) {
        const c = child;
        await new Promise<void>((r) => {
          c.once("exit", () => r());
          c.stdin?.end();
          setTimeout(() => c.kill("SIGKILL"), 2000).unref();
        });
      }
      await destroyNetns(opts.netns);
    },
  };
}
