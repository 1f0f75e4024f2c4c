// Graceful shutdown: on SIGINT/SIGTERM run the registered closers newest-first (gRPC
// server, listeners, stores), each bounded, then exit. A second signal exits at once.
import type { Logger } from "./log.js";

export type Closer = { name: string; close: () => Promise<void> | void };

export function onShutdown(
  log: Logger,
  closers: Closer[],
  opts: { timeoutMs?: number } = {},
): () => Promise<void> {
  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      for (const c of [...closers].reverse()) {
        const t0 = Date.now();
        try {
          await Promise.race([
            Promise.resolve(c.close()),
            new Promise((_, reject) =>
              setTimeout(() => reject(new Error("timed out")), opts.timeoutMs ?? 10_000).unref(),
            ),
          ]);
          log.debug("closed", { what: c.name, ms: Date.now() - t0 });
        } catch (err) {
          log.warn("close failed", { what: c.name, err });
        }
      }
    })();
    return stopping;
  };
  const handler = (sig: NodeJS.Signals) => {
    if (stopping) {
      log.warn("second signal, exiting now", { signal: sig });
      process.exit(130);
    }
    log.info("shutting down", { signal: sig });
    stop().then(() => process.exit(0));
  };
  process.on("SIGINT", handler);
  process.on("SIGTERM", handler);
  return stop;
}
