// The little persistence the binding cache needs: a subset of the shared Store
// (services/common/store), so the anchor runs on Redis or on the embedded store unchanged.
import { openStore, type Store } from "../../common/store/index.js";

export type BindingKv = Pick<Store, "get" | "compareAndSet" | "del" | "scan" | "close">;

/** A redis:// URL gives Redis; nothing (or memory:) gives the embedded store. */
export function openBindingKv(url?: string): Promise<Store> {
  return openStore(url);
}
