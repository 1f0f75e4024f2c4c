// Starts a worker thread running a TypeScript module (see entry.mjs for why it needs one).
import { type TransferListItem, Worker } from "node:worker_threads";

/** `module`: the worker's file URL (e.g. `new URL("./x-worker.ts", import.meta.url)`). */
export function startWorker(
  module: URL,
  data: object,
  name: string,
  transferList: TransferListItem[] = [],
): Worker {
  return new Worker(new URL("./entry.mjs", import.meta.url), {
    workerData: { ...data, __module: module.href },
    transferList,
    name,
  });
}
