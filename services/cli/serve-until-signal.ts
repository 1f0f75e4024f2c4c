// The shape every `vmhop … serve` shares: open what the service needs (registering a closer for
// each thing as it opens), print the ready line, then serve until SIGINT/SIGTERM closes them
// newest-first. A failure while opening closes what was already open and exits 1 with its
// message (a CliError keeps its own exit code).
import { type Closer, onShutdown } from "../common/lifecycle.js";
import type { Logger } from "../common/log.js";
import { CliError } from "./errors.js";

export async function serveUntilSignal(
  log: Logger,
  closers: Closer[],
  open: () => Promise<void>,
): Promise<number> {
  const stop = onShutdown(log, closers);
  try {
    await open();
  } catch (err) {
    await stop();
    if (err instanceof CliError) throw err;
    throw new CliError((err as Error).message, 1);
  }
  await new Promise(() => {}); // serve until a signal
  return 0;
}
