// The address a service hands to a peer for one of its listeners: the one given with an
// advertise flag, else the bound one, and never an unspecified address (0.0.0.0, ::): a peer
// given that would dial itself. Refused at start, with the flag to use, not at the first call.
import { isIP } from "node:net";
import { formatAddress, type ListenAddress, parseListenAddress } from "./listen-address.js";

/** 0.0.0.0, ::, their other spellings and the empty host: "every address", nobody's address. */
export function isUnspecifiedHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "");
  if (h === "" || h === "0.0.0.0") return true;
  if (isIP(h) !== 6) return false;
  // The URL parser writes an IPv6 address in its shortest form: "::" for every spelling of zero.
  const short = new URL(`http://[${h}]/`).hostname;
  return short === "[::]" || short === "[::ffff:0:0]";
}

/**
 * What peers are told to dial. `advertise` is HOST:PORT, [V6]:PORT or HOST (V6 bare; then the bound
 * port); without it the bound address itself, which must then name one host. `flag` names the
 * option in the error ("--channel-advertise"). Errors are plain Errors for the caller to wrap.
 */
export function advertisedAddress(bound: ListenAddress, advertise: string | undefined, flag: string): string {
  if (advertise === undefined || advertise === "") {
    if ("host" in bound && isUnspecifiedHost(bound.host))
      throw new Error(
        `listening on ${formatAddress(bound)} (every address) gives peers no address to dial: ` +
          `add ${flag} HOST:PORT, the address other hosts reach this one at`,
      );
    return formatAddress(bound);
  }
  // A bare IPv6 address is a HOST; otherwise a port follows the last colon.
  const m: (string | undefined)[] | null =
    isIP(advertise) === 6
      ? [advertise, advertise, undefined, undefined]
      : /^(?:\[([^\]]+)\]|([^:[\]]+))(?::(\d+))?$/.exec(advertise);
  if (!m) throw new Error(`bad ${flag} "${advertise}": expected HOST:PORT, [IPV6]:PORT or HOST`);
  const host = m[1] ?? m[2] ?? "";
  if (isUnspecifiedHost(host))
    throw new Error(`bad ${flag} "${advertise}": ${host} is no address a peer can dial`);
  const port = m[3] === undefined ? ("port" in bound ? bound.port : 0) : Number(m[3]);
  if (!(port > 0 && port <= 65535))
    throw new Error(
      `bad ${flag} "${advertise}": needs a port (1-65535)${m[3] ? "" : " when listening on port 0"}`,
    );
  return formatAddress({ host, port });
}

/**
 * advertisedAddress's refusals for a listen address not yet bound (a CLI checks before it starts
 * anything; port 0 stands in for whichever port the kernel will pick). Throws as it does.
 */
export function checkAdvertise(listen: string, advertise: string | undefined, flag: string): void {
  const a = parseListenAddress(listen);
  advertisedAddress("port" in a && a.port === 0 ? { ...a, port: 1 } : a, advertise, flag);
}
