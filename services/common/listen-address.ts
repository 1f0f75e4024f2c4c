// Listen addresses as every vmhop service takes them: HOST:PORT, [V6]:PORT, PORT
// (127.0.0.1) or unix:PATH.

export type ListenAddress = { host: string; port: number } | { path: string };

/**
 * Parses "HOST:PORT", "[V6]:PORT", "PORT" (127.0.0.1) or
 * "unix:PATH". A bad address is an Error naming the accepted forms.
 */
export function parseListenAddress(s: string): ListenAddress {
  if (s.startsWith("unix:")) {
    const path = s.slice(5);
    if (!path) throw new Error(`bad listen address "${s}": unix: needs a path`);
    return { path };
  }
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d+)$/.exec(s) ?? /^()()(\d+)$/.exec(s);
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || !(port >= 0 && port <= 65535))
    throw new Error(`bad listen address "${s}": expected HOST:PORT, [IPV6]:PORT, PORT or unix:PATH`);
  return { host: m[1] || m[2] || "127.0.0.1", port };
}

export function formatAddress(a: ListenAddress): string {
  if ("path" in a) return `unix:${a.path}`;
  return a.host.includes(":") ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}
