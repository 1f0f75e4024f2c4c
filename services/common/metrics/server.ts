// The /metrics endpoint: a node:http server answering GET /metrics with the process registry
// in Prometheus text format (anything else is 404). One per service process.
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";
import { formatAddress, parseListenAddress } from "../listen-address.js";
import { collectProcessMetrics, registry as processRegistry } from "./registry.js";

export interface MetricsServer {
  /** HOST:PORT it listens on (the real port when 0 was asked for). */
  address: string;
  close(): Promise<void>;
}

/** Listens on HOST:PORT; rejects with the listen error (e.g. EADDRINUSE). */
export async function startMetricsServer(
  listen: string,
  registry: Registry = processRegistry,
): Promise<MetricsServer> {
  const a = parseListenAddress(listen);
  if ("path" in a)
    throw new Error(`bad metrics address "${listen}": Prometheus scrapes HOST:PORT, not unix:`);
  if (registry === processRegistry) collectProcessMetrics();
  const server = createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (req.method !== "GET" || path !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: GET /metrics\n");
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { "content-type": registry.contentType }).end(text),
      (err: Error) => res.writeHead(500, { "content-type": "text/plain" }).end(`${err.message}\n`),
    );
  });
  // Scrapes are short; an idle keep-alive connection must not hold a shutdown up.
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(a.port, a.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  return {
    address: formatAddress({ host: a.host, port: bound.port }),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
