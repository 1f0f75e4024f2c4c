// openStore(url): Redis when a redis:// URL is given, the embedded store otherwise.
import { MemoryStore } from "./memory.js";
import { RedisStore } from "./redis.js";
import { type Store, StoreError } from "./store.js";

export { MemoryStore } from "./memory.js";
export { RedisStore } from "./redis.js";
export type { SetOptions, Store, Unsubscribe } from "./store.js";
export { StoreError } from "./store.js";

export async function openStore(url?: string, opts: { prefix?: string } = {}): Promise<Store> {
  if (!url || url === "memory:") return new MemoryStore();
  if (!/^rediss?:\/\//.test(url))
    throw new StoreError(`unsupported store URL '${url}': use redis://HOST:PORT or memory:`);
  return RedisStore.connect(url, opts);
}
