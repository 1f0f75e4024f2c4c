// gRPC clients: the site agent's link to the anchor (RemoteAnchor) and the anchor's handle on a
// site agent (RemoteSite), each shaped as the in-process interface it replaces.
import * as grpc from "@grpc/grpc-js";
import {
  type AttachVmResponse,
  BindingStatus,
  NetReachServiceClient,
  NetReachSiteServiceClient,
  type Site as PbSite,
  type RefreshBindingResponse,
  type UpdateBindingResponse,
} from "../../../gen/vmhop/v1/netreach.js";
import { fromGrpcError } from "../../common/grpc/status.js";
import { traceContextInterceptor } from "../../common/grpc/trace-context.js";
import type { Outcome } from "../binding/cache.js";
import type { SiteEndpoint, UpdateRequest } from "../binding/types.js";
import type { SiteControl } from "../migration-hooks.js";
import type { AnchorLink, PrepareOptions, VmNet } from "../site/agent.js";
import { outcomeFromAck, vmNetToProto } from "./convert.js";

// Reconnect soon after a peer restarts (grpc-js backs off up to 120 s by default). Calls carry
// the trace context: a site agent's span is a child of the anchor's that called it.
const CHANNEL: grpc.ClientOptions = {
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 2000,
  interceptors: [traceContextInterceptor],
};

type Callback<Res> = (err: grpc.ServiceError | null, res: Res) => void;

/**
 * Runs one unary call as a promise, with a deadline. It waits for the channel (an anchor or site
 * agent that is restarting) rather than failing at once. A failure is a ServiceError of the peer's
 * kind, so a handler that passes it on answers the peer's status.
 */
function call<Res>(
  fn: (meta: grpc.Metadata, opts: grpc.CallOptions, cb: Callback<Res>) => unknown,
  ms = 10_000,
) {
  const meta = new grpc.Metadata();
  meta.setOptions({ waitForReady: true });
  return new Promise<Res>((resolve, reject) =>
    fn(meta, { deadline: Date.now() + ms }, (err, res) => (err ? reject(fromGrpcError(err)) : resolve(res))),
  );
}

export class RemoteAnchor implements AnchorLink {
  readonly client: NetReachServiceClient;

  constructor(address: string) {
    this.client = new NetReachServiceClient(address, grpc.credentials.createInsecure(), CHANNEL);
  }

  async updateBinding(req: UpdateRequest): Promise<Outcome> {
    const res = await call<UpdateBindingResponse>((m, o, cb) =>
      this.client.updateBinding(
        {
          vmId: req.vmId,
          site: req.site,
          endpoint: { sid6: req.sid6, sid4: req.sid4 },
          generation: req.generation,
          lifetimeSeconds: req.lifetimeSeconds ?? 0,
          attachedUnixMs: Math.round(req.attachedAtMs ?? 0),
        },
        m,
        o,
        cb,
      ),
    );
    return outcomeFromAck(res);
  }

  async refresh(vmId: string, generation: number, lifetimeSeconds?: number): Promise<Outcome> {
    const res = await call<RefreshBindingResponse>((m, o, cb) =>
      this.client.refreshBinding({ vmId, generation, lifetimeSeconds: lifetimeSeconds ?? 0 }, m, o, cb),
    );
    return outcomeFromAck({ ...res, accepted: res.status === BindingStatus.BINDING_STATUS_ACCEPTED });
  }

  async registerSite(site: PbSite): Promise<void> {
    await call((m, o, cb) => this.client.registerSite({ site }, m, o, cb));
  }

  close(): void {
    this.client.close();
  }
}

export class RemoteSite implements SiteControl {
  private readonly client: NetReachSiteServiceClient;

  constructor(
    readonly endpoint: SiteEndpoint,
    address: string,
  ) {
    this.client = new NetReachSiteServiceClient(address, grpc.credentials.createInsecure(), CHANNEL);
  }

  async prepare(vm: VmNet, port?: string, opts: PrepareOptions = {}): Promise<void> {
    await call((m, o, cb) =>
      this.client.prepareVm({ vm: vmNetToProto(vm), port: port ?? "", hold: opts.hold ?? false }, m, o, cb),
    );
  }

  async attach(vm: VmNet, port: string, generation: number, lifetimeSeconds?: number): Promise<Outcome> {
    const res = await call<AttachVmResponse>((m, o, cb) =>
      this.client.attachVm(
        { vm: vmNetToProto(vm), port, generation, lifetimeSeconds: lifetimeSeconds ?? 0 },
        m,
        o,
        cb,
      ),
    );
    return outcomeFromAck(res.ack);
  }

  async leave(vm: VmNet, forwardTo?: SiteEndpoint): Promise<void> {
    await call((m, o, cb) =>
      this.client.leaveVm(
        {
          vm: vmNetToProto(vm),
          forwardToSite: forwardTo?.site ?? "",
          forwardTo: forwardTo ? { sid6: forwardTo.sid6, sid4: forwardTo.sid4 } : undefined,
        },
        m,
        o,
        cb,
      ),
    );
  }

  async cleanup(vm: VmNet): Promise<void> {
    await call((m, o, cb) => this.client.cleanupVm({ vm: vmNetToProto(vm) }, m, o, cb));
  }

  async place(vm: VmNet, port: string, generation: number, lifetimeSeconds: number): Promise<void> {
    await call((m, o, cb) =>
      this.client.adoptVm({ vm: vmNetToProto(vm), port, generation, lifetimeSeconds }, m, o, cb),
    );
  }

  close(): void {
    this.client.close();
  }
}
