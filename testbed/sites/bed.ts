// A whole-VM test bed: datacenter sites as network namespaces joined by the emulated WAN, every
// vmhop service running as the process an operator would run, and a control-plane over them.
//
//   cn ── home link ── anchor ══ WAN (userspace relay: delay, rate) ══ s1 … sN
//                                                                      │
//         in each site namespace: block-server (NBD on [fc00:k::b]:10809), page-server (migration
//         channel on [fc00:k::b]), and the QEMU it runs (the VM's tap is created in the site)
//
//   root namespace: the anchor and the site agents (they program their namespaces through
//   --netns), the control-plane; control traffic runs on loopback and unix sockets, while the
//   bulk bytes (the NBD upstream of a relocating disk, QEMU's migration stream) cross the WAN.
//
// Host k is `h<k>` at site `s<k>`. A bed without address mobility (`netreach: false`) has no
// anchor nor site agents, and the control-plane runs without --netreach.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { ControlClient } from "../../services/control-plane/client.js";
import type { DataplaneKind } from "../../services/netreach/dataplane/tunnel.js";
import { addAddress, killNetnsProcesses } from "../netns.js";
import { NetreachBed } from "../netreach/bed.js";
import { type ServiceOptions, type ServiceProcess, startService } from "../service-process.js";

export { HOME } from "../netreach/bed.js";

/** Where site k's services listen for the other sites (on its loopback, routed over the WAN). */
export function serviceAddressOf(k: number): string {
  return `fc00:${k}::b`;
}

export const NBD_PORT = 10809;

export interface SitesBedOptions {
  /** Namespace prefix (`nr-…-`, see uniqueNetnsPrefix); everything with it is removed at the end. */
  prefix: string;
  /** Folder for sockets, state, logs and disks (the caller removes it). */
  dir: string;
  sites?: number;
  /** One-way WAN delay (default 25 ms). */
  wanDelayMs?: number;
  /** Each WAN link's rate per direction (default 450 Mbit/s). */
  wanRateBitsPerSecond?: number;
  dataplane?: DataplaneKind;
  /** Address mobility: the anchor and site agents (default true). */
  netreach?: boolean;
  /** The control-plane's store URL (default: its embedded store). */
  store?: string;
  /** Extra `vmhop control serve` / `page serve` arguments. */
  controlArgs?: string[];
  pageArgs?: string[];
  /** How long each service may take to print its ready line (default 2 min). */
  readyMs?: number;
  /** Progress lines ("s1 block-server ready"). */
  say?: (line: string) => void;
  /** Host k's power driver, registered with it (default: none). */
  hostPower?: (k: number) => { driver: string; params: Record<string, string> } | undefined;
}

export interface SiteServices {
  /** 1-based. */
  k: number;
  site: string;
  hostId: string;
  ns: string;
  block: ServiceProcess;
  page: ServiceProcess;
  agent?: ServiceProcess;
  /** gRPC addresses (unix sockets) and the NBD address the other sites reach. */
  pageAddress: string;
  blockAddress: string;
  nbdAddress: string;
}

export class SitesBed {
  net!: NetreachBed;
  readonly sites: SiteServices[] = [];
  anchor?: ServiceProcess;
  control!: ServiceProcess;
  client!: ControlClient;
  private readonly services: ServiceProcess[] = [];
  /** How each site's block-server and page-server were started: powerOnSite starts them so again. */
  private readonly siteRuns = new Map<number, { block: ServiceOptions; page: ServiceOptions }>();

  private constructor(readonly opts: SitesBedOptions) {}

  /** Builds the namespaces and starts every service; on any failure, tears down what it started. */
  static async start(opts: SitesBedOptions): Promise<SitesBed> {
    const bed = new SitesBed(opts);
    try {
      await bed.build();
    } catch (err) {
      await bed.stop();
      throw err;
    }
    return bed;
  }

  get controlAddress(): string {
    return this.control.grpc;
  }

  get anchorAddress(): string | undefined {
    return this.anchor?.grpc;
  }

  /** The correspondent's namespace (on the home link). */
  get cn(): string {
    return this.net.ns.cn;
  }

  private say(line: string): void {
    this.opts.say?.(line);
  }

  private async run(o: Parameters<typeof startService>[0]): Promise<ServiceProcess> {
    // Every service serves /metrics on a free port (of its namespace's loopback when it runs in one).
    const args = o.args.includes("--metrics") ? o.args : [...o.args, "--metrics", "127.0.0.1:0"];
    // Up to 2 min for the ready line: every site's services start at once, and on a machine
    // shared with other QEMU runs one start alone has taken over 30 s.
    const s = await startService({ readyMs: this.opts.readyMs ?? 120_000, ...o, args });
    this.services.push(s);
    const m = s.ready.metrics;
    this.say(`${o.name} ready${m ? `, metrics ${m}${o.netns ? ` (in netns ${o.netns})` : ""}` : ""}`);
    return s;
  }

  private async build(): Promise<void> {
    const o = this.opts;
    const n = o.sites ?? 2;
    const delay = o.wanDelayMs ?? 25;
    this.net = await NetreachBed.create({
      prefix: o.prefix,
      sites: n,
      wanDelayMs: delay,
      wanRateBitsPerSecond: o.wanRateBitsPerSecond ?? 450e6,
      dataplane: o.dataplane,
      agents: false,
    });
    this.say(
      `${n} sites as namespaces ${o.prefix}s1…s${n}; WAN ${delay} ms one way, ` +
        `${((o.wanRateBitsPerSecond ?? 450e6) / 1e6).toFixed(0)} Mbit/s; data plane ${this.net.dataplane}`,
    );
    const netreach = o.netreach !== false;
    if (netreach) await this.startAnchor();
    // Every site at once: the services start in a few seconds each on a loaded machine.
    const sites = await settleAll(Array.from({ length: n }, (_, i) => this.startSite(i + 1, netreach)));
    this.sites.push(...sites);
    const cpArgs = ["control", "serve", "--grpc", "127.0.0.1:0"];
    if (netreach) cpArgs.push("--netreach", this.anchorAddress!);
    if (o.store) cpArgs.push("--store", o.store);
    this.control = await this.run({ name: "control-plane", args: [...cpArgs, ...(o.controlArgs ?? [])] });
    this.client = new ControlClient(this.controlAddress);
    for (const s of this.sites)
      await this.client.registerHost({
        hostId: s.hostId,
        site: s.site,
        pageServerAddress: s.pageAddress,
        blockServerAddress: s.blockAddress,
        blockNbdAddress: s.nbdAddress,
        cpus: 2,
        memoryMib: 4096,
        asleep: false,
        power: o.hostPower?.(s.k),
      });
  }

  private async startAnchor(): Promise<void> {
    this.anchor = await this.run({
      name: "netreach anchor",
      args: ["netreach", ...this.net.anchorServeArgs("127.0.0.1:0")],
    });
  }

  private async startSite(k: number, netreach: boolean): Promise<SiteServices> {
    const ns = this.net.ns.sites[k - 1];
    const site = `s${k}`;
    const dir = join(this.opts.dir, site);
    mkdirSync(dir, { recursive: true });
    const svc = serviceAddressOf(k);
    await addAddress(ns, "lo", `${svc}/128`);
    // The page-server's QEMU opens its disk on this site's NBD address and creates its tap here.
    const nbdAddress = `[${svc}]:${NBD_PORT}`;
    const blockAddress = `unix:${join(dir, "block.sock")}`;
    const pageAddress = `unix:${join(dir, "page.sock")}`;
    const runs = {
      block: {
        name: `${site} block-server`,
        netns: ns,
        args: [
          "block",
          "serve",
          "--listen",
          nbdAddress,
          "--grpc",
          blockAddress,
          "--state-dir",
          join(dir, "block"),
        ],
      },
      page: {
        name: `${site} page-server`,
        netns: ns,
        args: [
          "page",
          "serve",
          "--listen",
          pageAddress,
          "--channel-listen",
          `[${svc}]:0`,
          "--run-dir",
          join(dir, "page"),
          ...(this.opts.pageArgs ?? []),
        ],
      },
    };
    this.siteRuns.set(k, runs);
    const [block, page, agent] = await settleAll([
      this.run(runs.block),
      this.run(runs.page),
      netreach
        ? this.run({
            name: `${site} netreach agent`,
            args: ["netreach", ...this.net.siteServeArgs(k, this.anchorAddress!)],
          })
        : Promise.resolve(undefined),
    ]);
    return { k, site, hostId: `h${k}`, ns, block, page, agent, pageAddress, blockAddress, nbdAddress };
  }

  /**
   * Switches site k's host off (the `testbed` power driver, testbed/power.ts): its block-server
   * and page-server stopped, whatever else runs in its namespace (QEMU) ended. The namespace and
   * its links stay, as a switched-off machine's cabling does.
   */
  async powerOffSite(k: number): Promise<void> {
    const s = this.sites[k - 1];
    for (const p of [s.page, s.block]) {
      await p.stop();
      this.services.splice(this.services.indexOf(p), 1);
    }
    await killNetnsProcesses(s.ns);
  }

  /** Boots site k's host again: its block-server and page-server as first started (same addresses, same state). */
  async powerOnSite(k: number): Promise<void> {
    const runs = this.siteRuns.get(k)!;
    const [block, page] = await settleAll([this.run(runs.block), this.run(runs.page)]);
    Object.assign(this.sites[k - 1], { block, page });
  }

  /**
   * Starts site k's block-server or page-server again as first started (same addresses, same
   * state), after a test killed it; a killed one's stale unix socket is removed at its start.
   */
  async restartService(k: number, which: "block" | "page"): Promise<ServiceProcess> {
    const s = await this.run({ ...this.siteRuns.get(k)![which], name: `s${k} ${which}-server (restarted)` });
    this.sites[k - 1][which] = s;
    return s;
  }

  /**
   * Stops every service (control-plane first, so nothing drives a migration into a half-gone
   * bed), ends whatever still runs in the site namespaces (page-servers leave their QEMUs
   * running by design), and removes the namespaces.
   */
  stop(): Promise<void> {
    this.stopping ??= this.teardown();
    return this.stopping;
  }

  private stopping?: Promise<void>;

  private async teardown(): Promise<void> {
    this.client?.close();
    for (const s of [...this.services].reverse()) await s.stop().catch(() => undefined);
    for (const ns of this.net?.ns.sites ?? []) await killNetnsProcesses(ns);
    await this.net?.destroy();
  }
}

/**
 * Promise.all that waits for every promise to settle before failing: a service still starting
 * when another failed is then known (and stopped) before the bed is torn down.
 */
async function settleAll<T extends readonly unknown[]>(
  ps: [...{ [K in keyof T]: Promise<T[K]> }],
): Promise<T>;
async function settleAll<T>(ps: Promise<T>[]): Promise<T[]>;
async function settleAll(ps: Promise<unknown>[]): Promise<unknown[]> {
  const r = await Promise.allSettled(ps);
  const failed = r.find((x): x is PromiseRejectedResult => x.status === "rejected");
  if (failed) throw failed.reason;
  return r.map((x) => (x as PromiseFulfilledResult<unknown>).value);
}
