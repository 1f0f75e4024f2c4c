// The sites the anchor knows: each site agent registers its endpoint (SIDs) and the gRPC
// address of its NetReachSiteService. Kept in the shared store, so a restarted anchor can still
// drive migrations between sites registered before.
import type { Store } from "../../common/store/index.js";
import { BindingError, checkEndpoint, type SiteEndpoint } from "../binding/types.js";
import type { DataplaneKind } from "../dataplane/tunnel.js";

export interface SiteRecord extends SiteEndpoint {
  controlAddress: string;
  /** Absent in records of agents older than the data plane choice: srv6. */
  dataplane?: DataplaneKind;
}

export class SiteDirectory {
  constructor(
    private readonly kv: Pick<Store, "get" | "set" | "scan">,
    private readonly prefix = "netreach/site/",
  ) {}

  async put(r: SiteRecord): Promise<void> {
    checkEndpoint(r);
    if (!/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d+$|^unix:/.test(r.controlAddress))
      throw new BindingError(
        `site ${r.site}: invalid control address '${r.controlAddress}' (want HOST:PORT)`,
      );
    await this.kv.set(this.prefix + r.site, JSON.stringify(r));
  }

  async get(site: string): Promise<SiteRecord | null> {
    const raw = await this.kv.get(this.prefix + site);
    return raw === null ? null : (JSON.parse(raw) as SiteRecord);
  }

  async list(): Promise<SiteRecord[]> {
    return (await this.kv.scan(this.prefix)).map(([, v]) => JSON.parse(v) as SiteRecord);
  }
}
