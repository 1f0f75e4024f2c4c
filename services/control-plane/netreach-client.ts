// The control-plane's handle on the netreach anchor (gRPC NetReachService), as promises: what
// moves a VM's home addresses with it (placement at creation, then a migration's phases).
import * as grpc from "@grpc/grpc-js";
import {
  type Binding,
  type HandoverMode,
  NetReachServiceClient,
  type UpdateBindingResponse,
} from "../../gen/vmhop/v1/netreach.js";
import type { VmAddresses } from "./network-states.js";
import { type Callback, CHANNEL, callPeer } from "./peer-call.js";

export interface PlaceRequest extends VmAddresses {
  vmId: string;
  mac: string;
  site: string;
  port: string;
  generation: number;
}

export interface MoveRequest {
  vmId: string;
  fromSite: string;
  toSite: string;
  port: string;
  mode: HandoverMode;
}

export class NetreachAnchor {
  private readonly client: NetReachServiceClient;

  constructor(
    readonly address: string,
    private readonly timeoutMs = 30_000,
  ) {
    this.client = new NetReachServiceClient(address, grpc.credentials.createInsecure(), CHANNEL);
  }

  private call<Res>(what: string, fn: (o: grpc.CallOptions, cb: Callback<Res>) => unknown): Promise<Res> {
    return callPeer(`netreach anchor ${this.address}`, this.address, what, this.timeoutMs, fn);
  }

  /** Registers the binding at the site and has its agent deliver on the port; the anchor's ack. */
  async place(r: PlaceRequest): Promise<UpdateBindingResponse> {
    const res = await this.call<{ ack?: UpdateBindingResponse }>("PlaceVm", (o, cb) =>
      this.client.placeVm(
        {
          vmId: r.vmId,
          mac: r.mac,
          homeIpv6: r.home_ipv6,
          homeIpv4: r.home_ipv4,
          site: r.site,
          port: r.port,
          generation: r.generation,
          lifetimeSeconds: 0,
        },
        new grpc.Metadata(),
        o,
        cb,
      ),
    );
    return res.ack!;
  }

  async prepareNetwork(r: MoveRequest): Promise<void> {
    await this.call("PrepareNetwork", (o, cb) =>
      this.client.prepareNetwork(
        { vmId: r.vmId, toSite: r.toSite, port: r.port, mode: r.mode },
        new grpc.Metadata(),
        o,
        cb,
      ),
    );
  }

  async switchOver(r: MoveRequest, generation: number): Promise<UpdateBindingResponse> {
    const res = await this.call<{ ack?: UpdateBindingResponse }>("SwitchOver", (o, cb) =>
      this.client.switchOver({ ...r, generation }, new grpc.Metadata(), o, cb),
    );
    return res.ack!;
  }

  async cleanupNetwork(vmId: string, fromSite: string): Promise<void> {
    await this.call("CleanupNetwork", (o, cb) =>
      this.client.cleanupNetwork({ vmId, fromSite }, new grpc.Metadata(), o, cb),
    );
  }

  /** The VM is gone: its site drops it, then its binding goes (none: nothing to do). */
  async deregister(vmId: string): Promise<void> {
    await this.call("DeregisterVm", (o, cb) =>
      this.client.deregisterVm({ vmId }, new grpc.Metadata(), o, cb),
    );
  }

  async cancelNetwork(vmId: string, toSite: string): Promise<void> {
    await this.call("CancelNetwork", (o, cb) =>
      this.client.cancelNetwork({ vmId, toSite }, new grpc.Metadata(), o, cb),
    );
  }

  /** The VM's binding, or undefined when it has none. */
  async binding(vmId: string): Promise<Binding | undefined> {
    const res = await this.call<{ bindings: Binding[] }>("ListBindings", (o, cb) =>
      this.client.listBindings({}, new grpc.Metadata(), o, cb),
    );
    return res.bindings.find((b) => b.vmId === vmId);
  }

  close(): void {
    this.client.close();
  }
}
