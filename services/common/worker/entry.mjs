// Worker threads do not inherit the main thread's TypeScript loader (tsx registers it
// in-process): register it here, then load the worker's TypeScript module.
import { workerData } from "node:worker_threads";
import { register } from "tsx/esm/api";

register();
await import(workerData.__module);
