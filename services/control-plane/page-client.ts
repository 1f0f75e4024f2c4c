// The control-plane's handle on one host's page-server (gRPC PageService), as promises.
import * as grpc from "@grpc/grpc-js";
import {
  ChannelCompression,
  ChannelPath,
  type DescribeHostResponse,
  type MigrationMode,
  PageServiceClient,
  type StartMigrationRequest,
  type Vm,
  type VmSpec,
  type WarmIncomingResponse,
  type WatchMigrationResponse,
} from "../../gen/vmhop/v1/page.js";

import { type Callback, CHANNEL, ClientPool, callPeer, PeerError } from "./peer-call.js";

export class PageServer {
  private readonly client: PageServiceClient;

  constructor(
    readonly address: string,
    private readonly timeoutMs = 30_000,
  ) {
    this.client = new PageServiceClient(address, grpc.credentials.createInsecure(), CHANNEL);
  }

  private call<Res>(what: string, fn: (o: grpc.CallOptions, cb: Callback<Res>) => unknown): Promise<Res> {
    return callPeer(`page-server ${this.address}`, this.address, what, this.timeoutMs, fn);
  }

  /** Resolves once the page-server answers (its channel is ready), or rejects after ms. */
  reachable(ms: number): Promise<void> {
    return new Promise((resolve, reject) =>
      this.client.waitForReady(Date.now() + ms, (err) =>
        err
          ? reject(
              new PeerError(
                this.address,
                grpc.status.UNAVAILABLE,
                `page-server ${this.address} is unreachable: ${err.message}`,
              ),
            )
          : resolve(),
      ),
    );
  }

  /** What the host runs VMs with (QEMU version, accelerator); within `ms`. */
  describe(ms = this.timeoutMs): Promise<DescribeHostResponse> {
    return callPeer(`page-server ${this.address}`, this.address, "DescribeHost", ms, (o, cb) =>
      this.client.describeHost({}, new grpc.Metadata(), o, cb),
    );
  }

  /** The VM shapes this host keeps warm incoming QEMUs of (the whole set); within `ms`. */
  warmIncoming(shapes: VmSpec[], ms = this.timeoutMs): Promise<WarmIncomingResponse> {
    return callPeer(`page-server ${this.address}`, this.address, "WarmIncoming", ms, (o, cb) =>
      this.client.warmIncoming({ shapes }, new grpc.Metadata(), o, cb),
    );
  }

  async define(spec: VmSpec): Promise<Vm> {
    return (
      await this.call<{ vm?: Vm }>("DefineVm", (o, cb) =>
        this.client.defineVm({ spec }, new grpc.Metadata(), o, cb),
      )
    ).vm!;
  }

  async start(vmId: string): Promise<Vm> {
    return (
      await this.call<{ vm?: Vm }>("StartVm", (o, cb) =>
        this.client.startVm({ vmId }, new grpc.Metadata(), o, cb),
      )
    ).vm!;
  }

  /** `fencingToken`: the migration's, when its rollback stops the destination's QEMU; else 0. */
  async stop(vmId: string, force: boolean, fencingToken: number): Promise<Vm> {
    return (
      await this.call<{ vm?: Vm }>("StopVm", (o, cb) =>
        this.client.stopVm({ vmId, force, fencingToken }, new grpc.Metadata(), o, cb),
      )
    ).vm!;
  }

  /** Forgets a VM that does not run (the page-server refuses a running one). */
  async undefine(vmId: string): Promise<void> {
    await this.call("UndefineVm", (o, cb) => this.client.undefineVm({ vmId }, new grpc.Metadata(), o, cb));
  }

  async inspect(vmId: string): Promise<Vm> {
    return (
      await this.call<{ vm?: Vm }>("InspectVm", (o, cb) =>
        this.client.inspectVm({ vmId }, new grpc.Metadata(), o, cb),
      )
    ).vm!;
  }

  /**
   * The migration calls carry its fencing token: a page-server that saw a newer one for the VM
   * refuses them (FAILED_PRECONDITION), so a superseded driver cannot act.
   */
  async prepareIncoming(
    spec: VmSpec,
    migrationId: string,
    mode: MigrationMode,
    fencingToken: number,
  ): Promise<string> {
    const res = await this.call<{ channelAddress: string }>("PrepareIncoming", (o, cb) =>
      this.client.prepareIncoming(
        { spec, migrationId, mode, preempt: false, fencingToken },
        new grpc.Metadata(),
        o,
        cb,
      ),
    );
    return res.channelAddress;
  }

  /**
   * The source's channel opened while the destination is still prepared (the disk opening):
   * the StartMigration that follows with the same arguments starts at once.
   */
  async openMigrationChannel(...args: StartArgs): Promise<void> {
    const start = startRequest(...args);
    await this.call("OpenMigrationChannel", (o, cb) =>
      this.client.openMigrationChannel({ start }, new grpc.Metadata(), o, cb),
    );
  }

  async startMigration(...args: StartArgs): Promise<void> {
    const req = startRequest(...args);
    await this.call("StartMigration", (o, cb) => this.client.startMigration(req, new grpc.Metadata(), o, cb));
  }

  async abortMigration(migrationId: string, fencingToken: number): Promise<void> {
    await this.call("AbortMigration", (o, cb) =>
      this.client.abortMigration({ migrationId, fencingToken }, new grpc.Metadata(), o, cb),
    );
  }

  /**
   * Follows a migration until its final phase: `onUpdate` for each message, resolving with the
   * last one. Rejects with a PeerError when the page-server does not know the migration
   * (NOT_FOUND) or the stream breaks.
   */
  /** The page-server's current view of a migration (the first message of WatchMigration). */
  peekMigration(migrationId: string): Promise<WatchMigrationResponse> {
    return this.streamMigration(migrationId, { first: true, deadline: Date.now() + 5000 });
  }

  /** Follows a migration until the page-server ends the stream; resolves with the last message. */
  watchMigration(
    migrationId: string,
    onUpdate: (m: WatchMigrationResponse) => void,
  ): Promise<WatchMigrationResponse> {
    return this.streamMigration(migrationId, { onUpdate });
  }

  private streamMigration(
    migrationId: string,
    o: { first?: boolean; deadline?: number; onUpdate?: (m: WatchMigrationResponse) => void },
  ): Promise<WatchMigrationResponse> {
    const failed = (code: grpc.status, why: string) =>
      new PeerError(this.address, code, `page-server ${this.address}: WatchMigration: ${why}`);
    return new Promise((resolve, reject) => {
      let last: WatchMigrationResponse | undefined;
      const stream = this.client.watchMigration({ migrationId }, new grpc.Metadata(), {
        deadline: o.deadline ?? Number.POSITIVE_INFINITY,
      });
      stream.on("data", (m: WatchMigrationResponse) => {
        last = m;
        o.onUpdate?.(m);
        if (!o.first) return;
        resolve(m);
        stream.cancel();
      });
      stream.on("error", (err: grpc.ServiceError) => {
        // Our own cancel after the first message is no failure.
        if (!(o.first && last && err.code === grpc.status.CANCELLED))
          reject(failed(err.code, err.details || err.message));
      });
      stream.on("end", () =>
        last ? resolve(last) : reject(failed(grpc.status.UNAVAILABLE, "the stream ended without news")),
      );
    });
  }

  close(): void {
    this.client.close();
  }
}

/** One client per page-server address, reused. */
export class PageServers extends ClientPool<PageServer> {
  constructor() {
    super((address) => new PageServer(address));
  }
}

type StartArgs = [
  vmId: string,
  migrationId: string,
  channelAddress: string,
  mode: MigrationMode,
  fencingToken: number,
];

/** StartMigration's request as the control-plane sends it (also to open its channel ahead). */
function startRequest(
  ...[vmId, migrationId, channelAddress, mode, fencingToken]: StartArgs
): StartMigrationRequest {
  return {
    vmId,
    migrationId,
    channelAddress,
    mode,
    precopyRounds: 0,
    precopySeconds: 0,
    maxBandwidthBytesPerSecond: 0,
    compress: false,
    preempt: false,
    // The page-server's defaults: the path from the measured link.
    channelPath: ChannelPath.CHANNEL_PATH_UNSPECIFIED,
    compression: ChannelCompression.CHANNEL_COMPRESSION_UNSPECIFIED,
    fencingToken,
  };
}
