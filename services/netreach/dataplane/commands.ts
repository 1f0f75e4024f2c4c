// The kernel state netreach programs, as `ip -batch` lines. Pure functions: the anchor and site
// agents decide what to run, IpBatch runs it. How a route encapsulates is the data plane's
// (`Tunnel`, tunnel.ts); everything else is the same for SRv6 and VXLAN.
import type { Binding, SiteEndpoint } from "../binding/types.js";
import type { Tunnel } from "./tunnel.js";

export interface HomeAddresses {
  homeIpv6: string[];
  homeIpv4: string[];
}

/**
 * Metric of a forwarding pointer staged at the old site before switch-over: less preferred than
 * the VM's port routes (IPv6 default 1024, IPv4 0), so it only carries traffic once the port
 * has lost its link (`ignore_routes_with_linkdown`) or is gone.
 */
export const STAGED_METRIC = 4096;

const metricOpt = (metric?: number) => (metric === undefined ? "" : ` metric ${metric}`);

/**
 * Routes sending a VM's home addresses to a site's SIDs (atomic replace: no gap on re-point).
 * With `metric`, routes of that metric only (replace matches prefix and metric).
 */
export function tunnelRoutes(vm: HomeAddresses, to: SiteEndpoint, tunnel: Tunnel, metric?: number): string[] {
  const m = metricOpt(metric);
  return [
    ...vm.homeIpv6.map((a) => `route replace ${a}/128 ${tunnel.encap(to.sid6)}${m}`),
    ...vm.homeIpv4.map((a) => `route replace ${a}/32 ${tunnel.encap(to.sid4)}${m}`),
  ];
}

/** Deletes the host routes of the home addresses (one per address; with `metric`, that one). */
export function deleteHostRoutes(vm: HomeAddresses, metric?: number): string[] {
  const m = metricOpt(metric);
  return [
    ...vm.homeIpv6.map((a) => `route del ${a}/128${m}`),
    ...vm.homeIpv4.map((a) => `route del ${a}/32${m}`),
  ];
}

/** The anchor answers ARP/NS for the home addresses on the home link. */
export function proxyNeighbours(vm: HomeAddresses, homeDev: string): string[] {
  return [
    ...vm.homeIpv6.map((a) => `neigh replace proxy ${a} dev ${homeDev}`),
    ...vm.homeIpv4.map((a) => `neigh replace proxy ${a} dev ${homeDev}`),
  ];
}

export function deleteProxyNeighbours(vm: HomeAddresses, homeDev: string): string[] {
  return [
    ...vm.homeIpv6.map((a) => `neigh del proxy ${a} dev ${homeDev}`),
    ...vm.homeIpv4.map((a) => `neigh del proxy ${a} dev ${homeDev}`),
  ];
}

export function anchorBindingCommands(b: Binding, homeDev: string, tunnel: Tunnel): string[] {
  return [...tunnelRoutes(b, b, tunnel), ...proxyNeighbours(b, homeDev)];
}

/** A site's reverse tunnel: a table whose default routes encapsulate to the anchor's SIDs. */
export function reverseTunnelTable(
  anchor: { sid6: string; sid4: string },
  tunnel: Tunnel,
  table: number,
): string[] {
  return [
    `route replace ::/0 ${tunnel.encap(anchor.sid6)} table ${table}`,
    `route replace 0.0.0.0/0 ${tunnel.encap(anchor.sid4)} table ${table}`,
  ];
}

/**
 * Traffic from the VM's home addresses takes the reverse tunnel. `ip rule` cannot tell the family
 * from the address, and batch lines take no options: the IPv6 rules go to a `-6` batch.
 */
export function reverseTunnelRules(vm: HomeAddresses, table: number, pref: number, op: "add" | "del") {
  const rule = (a: string, len: number) => `rule ${op} from ${a}/${len} lookup ${table} pref ${pref}`;
  return { v6: vm.homeIpv6.map((a) => rule(a, 128)), v4: vm.homeIpv4.map((a) => rule(a, 32)) };
}

export interface HomeLinkImitation {
  /** The home link gateway's MAC: the guest's neighbour cache stays valid after a move. */
  gatewayMac: string;
  /** The home link gateway's IPv4 address (the guest's default route), if any. */
  gatewayIpv4?: string;
}

/**
 * Configures a VM port that just arrived in the site's namespace so it looks like the home link:
 * the gateway's MAC, fe80::1 and IPv4 address, answers proxied ARP at once.
 */
export function vmPortCommands(port: string, imitate: HomeLinkImitation): string[] {
  return [
    `link set dev ${port} address ${imitate.gatewayMac}`,
    `link set dev ${port} up`,
    `addr replace fe80::1/64 dev ${port}`,
    ...(imitate.gatewayIpv4 ? [`addr replace ${imitate.gatewayIpv4}/32 dev ${port}`] : []),
    // proxy_delay has no namespace default; ntable sets it per device over netlink.
    `ntable change name arp_cache dev ${port} proxy_delay 0`,
  ];
}

/**
 * Drops traffic for the home addresses here until the VM runs here (atomic replace, like every
 * re-point): what arrives earlier (a bicast copy) must neither wait in a paused VM's tap nor
 * start a neighbour resolution that fails and then holds the first real packets for a second.
 */
export function holdHomeAddresses(vm: HomeAddresses): string[] {
  return [
    ...vm.homeIpv6.map((a) => `route replace blackhole ${a}/128`),
    ...vm.homeIpv4.map((a) => `route replace blackhole ${a}/32`),
  ];
}

/** Delivers the home addresses on the VM's port (End.DT6/End.DX4 deliver through these routes). */
export function deliverHomeAddresses(vm: HomeAddresses, port: string): string[] {
  return [
    ...vm.homeIpv6.map((a) => `route replace ${a}/128 dev ${port}`),
    ...vm.homeIpv4.map((a) => `route replace ${a}/32 dev ${port}`),
  ];
}

/**
 * Bicasting at the anchor (make-before-break without the detour through the old site): while a
 * VM moves, nftables duplicates every packet for its home addresses (`dup to … map`) to a
 * per-VM key address whose route encapsulates to the destination site. The key addresses are
 * never on the wire (the copy keeps its own destination; the key only selects the route).
 */
export const BICAST_TABLE = "nr_bicast";

/** Key addresses of bicast slot n (0..65535): fdff:bca::n and 169.254.x.y. */
export function bicastKeys(slot: number): { key6: string; key4: string } {
  if (!Number.isInteger(slot) || slot < 0 || slot > 0xffff) throw new RangeError(`bicast slot ${slot}`);
  return { key6: `fdff:bca::${slot.toString(16)}`, key4: `169.254.${slot >> 8}.${slot & 0xff}` };
}

/** nft lines creating (afresh) the bicast tables, maps and rules for both families. */
export function bicastTables(): string[] {
  const fam = (f: "ip" | "ip6", type: string, proto: string) => [
    `add table ${f} ${BICAST_TABLE}`,
    `delete table ${f} ${BICAST_TABLE}`,
    `add table ${f} ${BICAST_TABLE}`,
    `add map ${f} ${BICAST_TABLE} to { type ${type} : ${type} ; }`,
    // raw priority: before routing, so the original still takes the binding's route.
    `add chain ${f} ${BICAST_TABLE} pre { type filter hook prerouting priority -300 ; }`,
    `add rule ${f} ${BICAST_TABLE} pre dup to ${proto} daddr map @to`,
  ];
  return [...fam("ip6", "ipv6_addr", "ip6"), ...fam("ip", "ipv4_addr", "ip")];
}

/** ip lines: the slot's key routes, encapsulating to the destination site. */
export function bicastRoutes(slot: number, to: { sid6: string; sid4: string }, tunnel: Tunnel): string[] {
  const { key6, key4 } = bicastKeys(slot);
  return [
    `route replace ${key6}/128 ${tunnel.encap(to.sid6)}`,
    `route replace ${key4}/32 ${tunnel.encap(to.sid4)}`,
  ];
}

/** nft lines: duplicate the VM's home addresses to the slot's keys (add) or stop (delete). */
export function bicastElements(vm: HomeAddresses, slot: number, op: "add" | "delete"): string[] {
  const { key6, key4 } = bicastKeys(slot);
  const el = (f: string, a: string, key: string) =>
    `${op} element ${f} ${BICAST_TABLE} to { ${op === "add" ? `${a} : ${key}` : a} }`;
  return [...vm.homeIpv6.map((a) => el("ip6", a, key6)), ...vm.homeIpv4.map((a) => el("ip", a, key4))];
}
