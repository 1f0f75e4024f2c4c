// gRPC NetReachSiteService over a SiteAgent: what the anchor calls during a migration.
import * as grpc from "@grpc/grpc-js";
import {
  type AdoptVmRequest,
  type AttachVmRequest,
  type LeaveVmRequest,
  NetReachSiteServiceService,
  type VmNet as PbVmNet,
  type PrepareVmRequest,
} from "../../../gen/vmhop/v1/netreach.js";
import { RpcError, type ServiceRegistration, unary } from "../../common/grpc/server.js";
import { checkGeneration } from "../binding/types.js";
import type { SiteAgent } from "../site/agent.js";
import { ackOf, endpointFromProto, toRpcError, vmNetFromProto } from "./convert.js";

const PORT = /^[A-Za-z0-9_.-]{1,15}$/;

function wrap<Req, Res>(fn: (req: Req) => Promise<Res>) {
  return unary<Req, Res>(fn, toRpcError);
}

function port(p: string, required: boolean): string | undefined {
  if (!p && !required) return undefined;
  if (!PORT.test(p)) throw new RpcError(grpc.status.INVALID_ARGUMENT, `invalid port (device name) '${p}'`);
  return p;
}

export function siteService(agent: SiteAgent): ServiceRegistration {
  const implementation = {
    prepareVm: wrap(async (req: PrepareVmRequest) => {
      await agent.prepare(vmNetFromProto(req.vm), port(req.port, false), { hold: req.hold });
      return {};
    }),
    attachVm: wrap(async (req: AttachVmRequest) => {
      checkGeneration(req.generation);
      const o = await agent.attach(
        vmNetFromProto(req.vm),
        port(req.port, true)!,
        req.generation,
        req.lifetimeSeconds || undefined,
      );
      return { ack: ackOf(o) };
    }),
    leaveVm: wrap(async (req: LeaveVmRequest) => {
      const to = req.forwardToSite ? endpointFromProto(req.forwardToSite, req.forwardTo) : undefined;
      await agent.leave(vmNetFromProto(req.vm), to);
      return {};
    }),
    cleanupVm: wrap(async (req: { vm?: PbVmNet }) => {
      await agent.cleanup(vmNetFromProto(req.vm));
      return {};
    }),
    adoptVm: wrap(async (req: AdoptVmRequest) => {
      checkGeneration(req.generation);
      await agent.place(vmNetFromProto(req.vm), port(req.port, true)!, req.generation, req.lifetimeSeconds);
      return {};
    }),
  };
  return {
    name: "vmhop.v1.NetReachSiteService",
    definition: NetReachSiteServiceService as unknown as grpc.ServiceDefinition,
    implementation: implementation as unknown as grpc.UntypedServiceImplementation,
  };
}
