// `vmhop netreach anchor serve` and `vmhop netreach site serve`: the anchor (NetReachService on
// the shared Store, kernel state restored at start) and a site agent (NetReachSiteService,
// registered with the anchor). Each prints one JSON ready line on stdout and stops on a signal.
import { CliError } from "../cli/errors.js";
import { serveUntilSignal } from "../cli/serve-until-signal.js";
import { advertisedAddress, checkAdvertise } from "../common/advertise.js";
import { type Config, ConfigError, helpText, type OptionSpecs, parseConfig } from "../common/config.js";
import { startGrpcServer } from "../common/grpc/server.js";
import type { Closer } from "../common/lifecycle.js";
import { parseListenAddress } from "../common/listen-address.js";
import { createLogger } from "../common/log.js";
import { DEFAULT_METRICS, metricsOption, serveMetrics } from "../common/metrics/flag.js";
import { openStore } from "../common/store/index.js";
import { Anchor } from "./anchor/anchor.js";
import { SiteDirectory } from "./anchor/sites.js";
import { DataplaneError, resolveDataplane } from "./dataplane/probe.js";
import type { DataplaneKind } from "./dataplane/tunnel.js";
import { anchorService } from "./grpc/anchor-service.js";
import { RemoteAnchor } from "./grpc/clients.js";
import { siteService } from "./grpc/site-service.js";
import { bindAnchorMetrics } from "./metrics.js";
import { SiteAgent } from "./site/agent.js";

const common = {
  netns: { type: "string", describe: "network namespace holding the kernel state (default: this one)" },
  dataplane: {
    type: "string",
    default: "auto",
    describe:
      "auto | srv6 | vxlan: how home traffic is tunnelled (auto: srv6 if the kernel has it, else vxlan)",
  },
  "tunnel-source": { type: "string", describe: "source address of the outer IPv6 header" },
  sid6: { type: "string", describe: "this node's endpoint for IPv6 home traffic (srv6: its End.DT6 SID)" },
  sid4: { type: "string", describe: "this node's endpoint for IPv4 home traffic (srv6: its End.DX4 SID)" },
  help: { type: "boolean", short: "h", describe: "show this help" },
} satisfies OptionSpecs;

export const anchorSpecs = {
  listen: {
    type: "string",
    default: "127.0.0.1:7410",
    describe: "gRPC address (HOST:PORT, PORT or unix:PATH)",
  },
  store: { type: "string", describe: "redis://HOST:PORT for durable bindings (default: embedded store)" },
  "home-dev": { type: "string", describe: "home link device (proxy ARP/NDP)" },
  "wan-dev": { type: "string", describe: "WAN device for the encapsulation routes (srv6 only)" },
  metrics: metricsOption(DEFAULT_METRICS["netreach-anchor"]),
  ...common,
} satisfies OptionSpecs;

export const siteSpecs = {
  listen: {
    type: "string",
    default: "127.0.0.1:7411",
    describe: "gRPC address (HOST:PORT, PORT or unix:PATH)",
  },
  anchor: { type: "string", describe: "the anchor's gRPC address (HOST:PORT)" },
  advertise: {
    type: "string",
    describe: "the address the anchor calls this agent on (default: the bound one)",
  },
  site: { type: "string", describe: "this site's name" },
  "wan-dev": {
    type: "string",
    describe: "WAN device for decapsulation SIDs and the reverse tunnel (srv6 only)",
  },
  "anchor-sid6": { type: "string", describe: "the anchor's endpoint for IPv6 (reverse tunnel)" },
  "anchor-sid4": { type: "string", describe: "the anchor's endpoint for IPv4 (reverse tunnel)" },
  "gateway-mac": { type: "string", describe: "the home gateway's MAC, imitated on VM ports" },
  "gateway-ipv4": { type: "string", describe: "the home gateway's IPv4 address, imitated on VM ports" },
  metrics: metricsOption(DEFAULT_METRICS["netreach-site"]),
  ...common,
} satisfies OptionSpecs;

const anchorUsage =
  "usage: vmhop netreach anchor serve --home-dev DEV --sid6 SID --sid4 SID --tunnel-source ADDR [--wan-dev DEV] [options]";
const siteUsage =
  "usage: vmhop netreach site serve --anchor HOST:PORT --site NAME --sid6 SID --sid4 SID --tunnel-source ADDR --anchor-sid6 SID --anchor-sid4 SID --gateway-mac MAC [--wan-dev DEV] [options]";
const OPTIONAL = ["help", "netns", "store", "advertise", "gateway-ipv4", "wan-dev", "metrics"];

function parse<S extends OptionSpecs>(specs: S, argv: string[], usage: string): Config<S> | null {
  let o: Config<S>;
  try {
    o = parseConfig(specs, argv);
  } catch (err) {
    if (err instanceof ConfigError) throw new CliError(`${err.message}\n\n${helpText(usage, specs)}`);
    throw err;
  }
  if (o.help) {
    console.log(helpText(usage, specs));
    return null;
  }
  const missing = Object.keys(specs).filter((k) => o[k] === undefined && !OPTIONAL.includes(k));
  if (missing.length)
    throw new CliError(`missing ${missing.map((k) => `--${k}`).join(", ")}\n\n${helpText(usage, specs)}`);
  return o;
}

/**
 * The data plane this node runs: what was asked for, if the kernel here can do it (probed at
 * start). Refused in one line naming the missing kernel feature, never at the first binding.
 */
async function dataplaneOf(want: string, wanDev: string | undefined): Promise<DataplaneKind> {
  let kind: DataplaneKind;
  try {
    kind = await resolveDataplane(want);
  } catch (err) {
    if (err instanceof DataplaneError) throw new CliError(err.message);
    throw err;
  }
  if (kind === "srv6" && !wanDev) throw new CliError("the srv6 data plane needs --wan-dev");
  return kind;
}

export async function serveAnchor(argv: string[]): Promise<number> {
  const o = parse(anchorSpecs, argv, anchorUsage);
  if (!o) return 0;
  const log = createLogger({ svc: "netreach-anchor" });
  const kind = await dataplaneOf(o.dataplane!, o["wan-dev"]);
  const store = await openStore(o.store).catch((err) => {
    throw new CliError((err as Error).message);
  });
  const closers: Closer[] = [{ name: "store", close: () => store.close() }];
  return serveUntilSignal(log, closers, async () => {
    const metrics = await serveMetrics(o.metrics, DEFAULT_METRICS["netreach-anchor"], log, closers);
    const anchor = await Anchor.start({
      kv: store,
      dataplane: {
        netns: o.netns,
        kind,
        homeDev: o["home-dev"]!,
        wanDev: o["wan-dev"],
        sids: { sid6: o.sid6!, sid4: o.sid4! },
        tunnelSource: o["tunnel-source"]!,
      },
      log,
    });
    // Stopping leaves the kernel forwarding with the last state; a restart restores from the store.
    closers.push({ name: "anchor", close: () => anchor.stop() });
    closers.push({ name: "metrics binding", close: bindAnchorMetrics(() => anchor.list()) });
    const svc = anchorService(anchor, new SiteDirectory(store));
    closers.push({ name: "site clients", close: () => svc.close() });
    const grpc = await startGrpcServer({
      serviceName: "netreach-anchor",
      listen: o.listen!,
      services: [svc],
      log,
    });
    closers.push({ name: "grpc", close: () => grpc.shutdown() });
    const bindings = (await anchor.list()).length;
    console.log(
      JSON.stringify({
        ready: true,
        grpc: grpc.address,
        store: store.kind,
        dataplane: kind,
        bindings,
        metrics,
      }),
    );
  });
}

export async function serveSite(argv: string[]): Promise<number> {
  const o = parse(siteSpecs, argv, siteUsage);
  if (!o) return 0;
  try {
    checkAdvertise(o.listen!, o.advertise, "--advertise");
  } catch (err) {
    throw new CliError((err as Error).message);
  }
  const log = createLogger({ svc: "netreach-site", site: o.site });
  const dataplane = await dataplaneOf(o.dataplane!, o["wan-dev"]);
  const anchor = new RemoteAnchor(o.anchor!);
  const closers: Closer[] = [{ name: "anchor client", close: () => anchor.close() }];
  return serveUntilSignal(log, closers, async () => {
    const metrics = await serveMetrics(o.metrics, DEFAULT_METRICS["netreach-site"], log, closers);
    const agent = await SiteAgent.start(
      {
        netns: o.netns,
        site: o.site!,
        sid6: o.sid6!,
        sid4: o.sid4!,
        dataplane,
        wanDev: o["wan-dev"],
        tunnelSource: o["tunnel-source"]!,
        anchorSids: { sid6: o["anchor-sid6"]!, sid4: o["anchor-sid4"]! },
        homeLink: { gatewayMac: o["gateway-mac"]!, gatewayIpv4: o["gateway-ipv4"] },
        log,
      },
      anchor,
    );
    closers.push({ name: "site agent", close: () => agent.close() });
    const grpc = await startGrpcServer({
      serviceName: "netreach-site",
      listen: o.listen!,
      services: [siteService(agent)],
      log,
    });
    closers.push({ name: "grpc", close: () => grpc.shutdown() });
    // The anchor dials this: never 0.0.0.0 (it would dial itself).
    const control = advertisedAddress(parseListenAddress(grpc.address), o.advertise, "--advertise");
    await anchor.registerSite({
      site: o.site!,
      endpoint: { sid6: o.sid6!, sid4: o.sid4! },
      controlAddress: control,
      dataplane,
    });
    log.info("site agent started", { dataplane });
    console.log(
      JSON.stringify({ ready: true, grpc: grpc.address, site: o.site, anchor: o.anchor, dataplane, metrics }),
    );
  });
}
