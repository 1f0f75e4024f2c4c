// The `--metrics HOST:PORT|none` option every `vmhop … serve` takes, and opening it: a taken
// default port falls back to a free one (several services or test beds on one machine), a
// taken explicit one is one clear error line.
import { CliError } from "../../cli/errors.js";
import type { Closer } from "../lifecycle.js";
import type { Logger } from "../log.js";
import { startMetricsServer } from "./server.js";

/** Default metrics addresses: each service's gRPC default port + 10. */
export const DEFAULT_METRICS = {
  "block-server": "127.0.0.1:10820",
  "page-server": "127.0.0.1:7412",
  placement: "127.0.0.1:7414",
  "control-plane": "127.0.0.1:7415",
  "netreach-anchor": "127.0.0.1:7420",
  "netreach-site": "127.0.0.1:7421",
} as const;

/** The option spec (no default in the spec itself: an explicit address is treated differently). */
export function metricsOption(defaultAddress: string) {
  return {
    type: "string",
    describe: `Prometheus /metrics address HOST:PORT, or 'none' (default ${defaultAddress}, another free port if taken)`,
  } as const;
}

/**
 * Serves /metrics as `--metrics` says (undefined: the default); registers its closer and returns
 * the address, or null for 'none'.
 */
export async function serveMetrics(
  given: string | undefined,
  defaultAddress: string,
  log: Logger,
  closers: Closer[],
): Promise<string | null> {
  if (given === "none") return null;
  const want = given ?? defaultAddress;
  let s: Awaited<ReturnType<typeof startMetricsServer>>;
  try {
    s = await startMetricsServer(want);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (given !== undefined || code !== "EADDRINUSE")
      throw new CliError(`cannot serve metrics on ${want}: ${why(err as NodeJS.ErrnoException)}`, 1);
    log.warn("default metrics port taken, using a free one", { wanted: want });
    s = await startMetricsServer(`${want.slice(0, want.lastIndexOf(":"))}:0`);
  }
  closers.push({ name: "metrics", close: () => s.close() });
  return s.address;
}

function why(err: NodeJS.ErrnoException): string {
  if (err.code === "EADDRINUSE") return "address already in use";
  if (err.code === "EADDRNOTAVAIL") return "no such address on this host";
  if (err.code === "EACCES") return "permission denied";
  return err.message;
}
