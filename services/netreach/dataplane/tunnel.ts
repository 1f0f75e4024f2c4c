// The two data planes netreach can program. Both carry a VM's home traffic between the anchor
// and the sites as IP-in-IPv6 toward a node's endpoint addresses (`sid6` for IPv6 home
// addresses, `sid4` for IPv4), and differ only in how a route encapsulates and how a node
// decapsulates:
//
//   srv6   route … encap seg6 mode encap.red segs SID dev WAN         (IPv6 + SRH-less header)
//          decap: SID routes with seg6local End.DT6 / End.DX4
//   vxlan  route … encap ip6 id VNI src TUNSRC dst SID csum dev nrvx0 (IPv6/UDP/VXLAN-GPE)
//          decap: SIDs are local addresses; one `external gpe` VXLAN device receives every VNI
//
// VXLAN-GPE carries the inner IP packet with no Ethernet header, so there are no MAC addresses
// or neighbour entries to keep right across a re-point: a binding stays one atomic route replace.
// The outer UDP checksum is on (`csum`): receivers refuse zero-checksum UDP over IPv6.
// Everything here is pure: lines for `ip -batch`.

export const DATAPLANES = ["srv6", "vxlan"] as const;
export type DataplaneKind = (typeof DATAPLANES)[number];

export function isDataplaneKind(v: string): v is DataplaneKind {
  return (DATAPLANES as readonly string[]).includes(v);
}

/** The VXLAN-GPE device netreach owns in its namespace, and its UDP port (IANA: VXLAN-GPE). */
export const VXLAN_DEV = "nrvx0";
export const VXLAN_PORT = 4790;
/** VNI on the wire; the receiving `external` device accepts any, so it only labels our traffic. */
export const VXLAN_VNI = 4242;

export interface Tunnel {
  readonly kind: DataplaneKind;
  /** Route suffix sending a packet, encapsulated, to the node owning endpoint address `sid`. */
  encap(sid: string): string;
  /** Lines making this node decapsulate what arrives for its own endpoint addresses. */
  setup(self: { sid6: string; sid4: string }): string[];
}

export interface TunnelConfig {
  /** Outer source address (the node's own, routed to it across the WAN). */
  tunnelSource: string;
  /** srv6 only: device named in encap routes (the kernel routes the outer packet anyway). */
  wanDev?: string;
  /** srv6 only: device named in the seg6local decapsulation routes. */
  decapDev?: string;
}

function srv6(cfg: TunnelConfig): Tunnel {
  const { wanDev, decapDev } = cfg;
  if (!wanDev || !decapDev) throw new Error("the srv6 data plane needs a WAN device (--wan-dev)");
  return {
    kind: "srv6",
    encap: (sid) => `encap seg6 mode encap.red segs ${sid} dev ${wanDev}`,
    // End.DT6 looks the inner IPv6 packet up in the main table; End.DX4 with nexthop 0.0.0.0
    // forwards the inner IPv4 packet to its own destination (no VRF here for End.DT4).
    setup: (self) => [
      `sr tunsrc set ${cfg.tunnelSource}`,
      `route replace ${self.sid6}/128 encap seg6local action End.DT6 table main dev ${decapDev}`,
      `route replace ${self.sid4}/128 encap seg6local action End.DX4 nh4 0.0.0.0 dev ${decapDev}`,
    ],
  };
}

function vxlan(cfg: TunnelConfig): Tunnel {
  return {
    kind: "vxlan",
    encap: (sid) => `encap ip6 id ${VXLAN_VNI} src ${cfg.tunnelSource} dst ${sid} csum dev ${VXLAN_DEV}`,
    // `link add` of a device left by an earlier run fails with "File exists" (tolerated by the
    // caller): deleting it would cut the traffic a restarted anchor must keep forwarding.
    setup: (self) => [
      `link add ${VXLAN_DEV} type vxlan external gpe dstport ${VXLAN_PORT}`,
      `link set dev ${VXLAN_DEV} up`,
      `addr replace ${self.sid6}/128 dev lo`,
      ...(self.sid4 !== self.sid6 ? [`addr replace ${self.sid4}/128 dev lo`] : []),
    ],
  };
}

export function makeTunnel(kind: DataplaneKind, cfg: TunnelConfig): Tunnel {
  return kind === "srv6" ? srv6(cfg) : vxlan(cfg);
}

/** Errors of a setup line that only mean "already there" (the VXLAN device of an earlier run). */
export function setupTolerates(command: string, error: string): boolean {
  return command.startsWith(`link add ${VXLAN_DEV} `) && /File exists/.test(error);
}
