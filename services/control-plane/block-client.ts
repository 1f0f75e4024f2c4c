// The control-plane's handle on one host's block-server (gRPC BlockService), as promises: what a
// migration needs to relocate a VM's disk lazily (a proxy export at the destination, its
// background copy, promote, and the source export's release). Every call that changes an export
// carries the migration's fencing token: the block-server refuses one older than the newest it
// has seen on that export (isStaleFence), so a migration the VM has moved on from cannot undo
// what the next one did.
import * as grpc from "@grpc/grpc-js";
import { BlockServiceClient, ExportMode, type ExportStatus } from "../../gen/vmhop/v1/block.js";
import { type Callback, CHANNEL, ClientPool, callPeer, isNotFound, PeerError } from "./peer-call.js";

/**
 * The block-server refused a call because a newer migration (a higher fencing token) has acted
 * on that export since: it is no longer this migration's.
 */
export function isStaleFence(err: unknown): boolean {
  return (
    err instanceof PeerError &&
    err.code === grpc.status.FAILED_PRECONDITION &&
    err.message.includes("stale fencing token")
  );
}

export class BlockServer {
  private readonly client: BlockServiceClient;

  constructor(
    readonly address: string,
    private readonly timeoutMs = 30_000,
  ) {
    this.client = new BlockServiceClient(address, grpc.credentials.createInsecure(), CHANNEL);
  }

  private call<Res>(what: string, fn: (o: grpc.CallOptions, cb: Callback<Res>) => unknown): Promise<Res> {
    return callPeer(`block-server ${this.address}`, this.address, what, this.timeoutMs, fn);
  }

  /**
   * A proxy export `name` of `upstreamUrl` (the source's export), cache in the block-server's own
   * place. No background copy: it starts after the switch-over (blocks copied earlier could be
   * rewritten by the still-running source VM).
   */
  async createProxy(
    name: string,
    upstreamUrl: string,
    upstreamControl: string,
    fencingToken: number,
  ): Promise<void> {
    await this.call("CreateExport", (o, cb) =>
      this.client.createExport(
        {
          name,
          source: {
            $case: "proxy",
            value: {
              upstreamUrl,
              cachePath: "",
              blockSize: 0,
              startBackgroundCopy: false,
              rateLimitBytesPerSecond: 0,
              upstreamControl,
              autoPromote: false,
            },
          },
          readOnly: false,
          description: "",
          fencingToken,
        },
        new grpc.Metadata(),
        o,
        cb,
      ),
    );
  }

  /**
   * A target export `name`: the image at `imagePath` served in place, or (sizeBytes > 0) a new
   * empty image the block-server creates (in its cache directory when imagePath is empty).
   */
  async createTarget(name: string, imagePath: string, sizeBytes: number): Promise<void> {
    await this.call("CreateExport", (o, cb) =>
      this.client.createExport(
        {
          name,
          source: { $case: "target", value: { imagePath, sizeBytes } },
          readOnly: false,
          description: "",
          // A new VM's export: no migration has fenced it yet.
          fencingToken: 0,
        },
        new grpc.Metadata(),
        o,
        cb,
      ),
    );
  }

  async status(name: string): Promise<ExportStatus> {
    return (
      await this.call<{ status?: ExportStatus }>("GetExportStatus", (o, cb) =>
        this.client.getExportStatus({ name }, new grpc.Metadata(), o, cb),
      )
    ).status!;
  }

  async startCopy(name: string, rateLimitBytesPerSecond: number, fencingToken: number): Promise<void> {
    await this.call("StartBackgroundCopy", (o, cb) =>
      this.client.startBackgroundCopy(
        { name, rateLimitBytesPerSecond, parallelism: 0, fencingToken },
        new grpc.Metadata(),
        o,
        cb,
      ),
    );
  }

  /** The background copy's rate cap (bytes/s; 0 = none). */
  async setRate(name: string, rateLimitBytesPerSecond: number, fencingToken: number): Promise<void> {
    await this.call("SetRateLimit", (o, cb) =>
      this.client.setRateLimit({ name, rateLimitBytesPerSecond, fencingToken }, new grpc.Metadata(), o, cb),
    );
  }

  /** Proxy → target once every block is local (the block-server refuses before). */
  async promote(name: string, fencingToken: number): Promise<void> {
    await this.call("Promote", (o, cb) =>
      this.client.promote({ name, wait: false, fencingToken }, new grpc.Metadata(), o, cb),
    );
  }

  /** `discardLocalCopy`: a proxy's partial copy goes too (a destination after a rollback). */
  async remove(name: string, fencingToken: number, discardLocalCopy = false): Promise<void> {
    await this.call("RemoveExport", (o, cb) =>
      this.client.removeExport({ name, fencingToken, discardLocalCopy }, new grpc.Metadata(), o, cb),
    );
  }

  /** Export `name` is here and is a proxy of `upstreamUrl` (a migration's); false when it is absent or something else. */
  async isProxyOf(name: string, upstreamUrl: string): Promise<boolean> {
    const st = await this.status(name).catch((err) => {
      if (isNotFound(err)) return undefined;
      throw err;
    });
    const e = st?.export;
    return e?.mode === ExportMode.EXPORT_MODE_PROXY && e.upstreamUrl === upstreamUrl;
  }

  /**
   * Removes export `name`, with its partial copy, only if it is a proxy of `upstreamUrl` (a
   * migration's): an export of that name that is something else (the reason a create failed,
   * a VM's own disk) is not the caller's. Gone already: nothing to do.
   */
  async removeProxyOf(name: string, upstreamUrl: string, fencingToken: number): Promise<boolean> {
    if (!(await this.isProxyOf(name, upstreamUrl))) return false;
    // Its partial copy goes with it: a later migration here starts a fresh proxy of the disk.
    await this.remove(name, fencingToken, true);
    return true;
  }

  close(): void {
    this.client.close();
  }
}

/** One client per block-server address, reused. */
export class BlockServers extends ClientPool<BlockServer> {
  constructor() {
    super((address) => new BlockServer(address));
  }
}
