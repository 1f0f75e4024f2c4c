// NBD URIs as in the NBD URI spec (doc/uri.md of NetworkBlockDevice/nbd), the subset we use:
//   nbd://HOST[:PORT]/EXPORT              TCP (default port 10809)
//   nbd+unix:///EXPORT?socket=/path       unix socket
// Bad URIs throw NbdUrlError with the reason, so a CLI can print it as is.

export const NBD_DEFAULT_PORT = 10809;

export type NbdAddress =
  | { transport: "tcp"; host: string; port: number; exportName: string }
  | { transport: "unix"; path: string; exportName: string };

export class NbdUrlError extends Error {
  constructor(url: string, why: string) {
    super(`bad NBD URL ${JSON.stringify(url)}: ${why}`);
    this.name = "NbdUrlError";
  }
}

export function parseNbdUrl(url: string): NbdAddress {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new NbdUrlError(url, "not a URL (expected nbd://HOST:PORT/NAME or nbd+unix:///NAME?socket=PATH)");
  }
  // The export name is the path without its leading slash, percent-decoded.
  let exportName: string;
  try {
    exportName = decodeURIComponent(u.pathname.replace(/^\//, ""));
  } catch {
    throw new NbdUrlError(url, "export name is not valid percent-encoding");
  }
  if (u.username || u.password) throw new NbdUrlError(url, "user info is not supported");
  switch (u.protocol) {
    case "nbd:": {
      if (!u.hostname) throw new NbdUrlError(url, "missing host");
      if ([...u.searchParams.keys()].length > 0)
        throw new NbdUrlError(url, "query parameters are not supported");
      const port = u.port === "" ? NBD_DEFAULT_PORT : Number(u.port);
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw new NbdUrlError(url, "bad port");
      // IPv6 literals come back bracketed from URL.
      const host = u.hostname.replace(/^\[(.*)\]$/, "$1");
      return { transport: "tcp", host, port, exportName };
    }
    case "nbd+unix:": {
      if (u.host) throw new NbdUrlError(url, "nbd+unix URLs take no host (use nbd+unix:///NAME?socket=PATH)");
      const path = u.searchParams.get("socket");
      if (!path) throw new NbdUrlError(url, "missing ?socket=PATH");
      return { transport: "unix", path, exportName };
    }
    case "nbds:":
    case "nbds+unix:":
      throw new NbdUrlError(url, "TLS is not supported");
    default:
      throw new NbdUrlError(
        url,
        `unsupported scheme ${u.protocol.replace(/:$/, "")} (expected nbd or nbd+unix)`,
      );
  }
}

/** The canonical URL of an address (for logs and status). */
export function formatNbdUrl(a: NbdAddress): string {
  const name = encodeURIComponent(a.exportName);
  if (a.transport === "unix") return `nbd+unix:///${name}?socket=${encodeURIComponent(a.path)}`;
  const host = a.host.includes(":") ? `[${a.host}]` : a.host;
  return `nbd://${host}:${a.port}/${name}`;
}
