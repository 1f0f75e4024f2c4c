// Ethernet frames that tell a link "these addresses are now at this MAC": a gratuitous ARP for
// an IPv4 address and an unsolicited Neighbor Advertisement (Override set, RFC 4861 §7.2.6,
// as a home agent sends for a mobile node, RFC 6275 §10.4.1). Pure functions.
import { isIPv4 } from "node:net";
import { expandIPv6 } from "../probe/icmp-socket.js";

function macBytes(mac: string): Buffer {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac)) throw new RangeError(`invalid MAC '${mac}'`);
  return Buffer.from(mac.split(":").map((h) => Number.parseInt(h, 16)));
}

function ipv4Bytes(a: string): Buffer {
  if (!isIPv4(a)) throw new RangeError(`invalid IPv4 address '${a}'`);
  return Buffer.from(a.split(".").map(Number));
}

function ether(dst: Buffer, src: Buffer, type: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(14);
  dst.copy(h, 0);
  src.copy(h, 6);
  h.writeUInt16BE(type, 12);
  return Buffer.concat([h, payload]);
}

/** Gratuitous ARP request: sender and target protocol address both `ipv4`, sender `mac`. */
export function gratuitousArp(mac: string, ipv4: string): Buffer {
  const m = macBytes(mac);
  const ip = ipv4Bytes(ipv4);
  const arp = Buffer.alloc(28);
  arp.writeUInt16BE(1, 0); // Ethernet
  arp.writeUInt16BE(0x0800, 2); // IPv4
  arp[4] = 6;
  arp[5] = 4;
  arp.writeUInt16BE(1, 6); // request
  m.copy(arp, 8);
  ip.copy(arp, 14);
  ip.copy(arp, 24); // target hardware address stays zero
  return ether(Buffer.alloc(6, 0xff), m, 0x0806, arp);
}

/** One's-complement sum over the IPv6 pseudo-header and the ICMPv6 message. */
export function icmpv6Checksum(src: Buffer, dst: Buffer, msg: Buffer): number {
  const pseudo = Buffer.alloc(40);
  src.copy(pseudo, 0);
  dst.copy(pseudo, 16);
  pseudo.writeUInt32BE(msg.length, 32);
  pseudo[39] = 58;
  const all = Buffer.concat([pseudo, msg, msg.length % 2 ? Buffer.alloc(1) : Buffer.alloc(0)]);
  let sum = 0;
  for (let i = 0; i < all.length; i += 2) sum += all.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** Unsolicited NA to all nodes: `target` is at `mac` (Override set), sent from `source`. */
export function unsolicitedNa(mac: string, source: string, target: string): Buffer {
  const m = macBytes(mac);
  const src = expandIPv6(source);
  const dst = expandIPv6("ff02::1");
  const na = Buffer.alloc(32);
  na[0] = 136;
  na[4] = 0x20; // O flag (R = 0: not a router answer; S = 0: unsolicited)
  expandIPv6(target).copy(na, 8);
  na[24] = 2; // target link-layer address option
  na[25] = 1; // length in units of 8 bytes
  m.copy(na, 26);
  na.writeUInt16BE(icmpv6Checksum(src, dst, na), 2);
  const ip6 = Buffer.alloc(40);
  ip6.writeUInt32BE(0x60000000, 0);
  ip6.writeUInt16BE(na.length, 4);
  ip6[6] = 58;
  ip6[7] = 255; // hop limit 255, or receivers drop it (RFC 4861 §7.1.2)
  src.copy(ip6, 8);
  dst.copy(ip6, 24);
  return ether(Buffer.from([0x33, 0x33, 0, 0, 0, 1]), m, 0x86dd, Buffer.concat([ip6, na]));
}
