// Endpoint addresses for the test-bed tools: "HOST:PORT", "[V6]:PORT", "unix:PATH" or "/PATH".
export type Endpoint = { host: string; port: number } | { path: string };

export function parseEndpoint(text: string, what = "address"): Endpoint {
  if (text.startsWith("unix:")) {
    const path = text.slice(5);
    if (!path) throw new Error(`bad ${what} '${text}': empty unix socket path`);
    return { path };
  }
  if (text.startsWith("/")) return { path: text };
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(text);
  if (!m) throw new Error(`bad ${what} '${text}': expected HOST:PORT, [V6]:PORT or unix:PATH`);
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`bad ${what} '${text}': port ${port} out of range`);
  const host = m[1] ?? m[2];
  return { host: host === "" ? "127.0.0.1" : host, port };
}

export function formatEndpoint(e: Endpoint): string {
  if ("path" in e) return `unix:${e.path}`;
  return e.host.includes(":") ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`;
}
