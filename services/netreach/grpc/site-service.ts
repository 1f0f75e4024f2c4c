// gRPC NetReachSiteService over a SiteAgent: what the anchor calls during a migration.
import type * as grpc from "@grpc/grpc-js";
import {
  type AdoptVmRequest,
  type AttachVmRequest,
  type LeaveVmRequest,
  NetReachSiteServiceService,
  type VmNet as PbVmNet,
  type PrepareVmRequest,
} from "../../../gen/vmhop/v1/netreach.js";
import { ServiceError } from "../../common/errors.js";
import { type ServiceRegistration, unary } from "../../common/grpc/server.js";
import { checkGeneration } from "../binding/types.js";
import type { SiteAgent } from "../site/agent.js";
import { ackOf, endpointFromProto, vmNetFromProto } from "./convert.js";

const PORT = /^[A-Za-z0-9_.-]{1,15}$/;

function port(p: string, required: boolean): string | undefined {
  if (!p && !required) return undefined;
  if (!PORT.test(p)) throw new ServiceError("invalid", `invalid port (device name) '${p}'`);
  return p;
}

export function siteService(agent: SiteAgent): ServiceRegistration {
  const implementation = {
    prepareVm: unary(async (req: PrepareVmRequest) => {
      await agent.prepare(vmNetFromProto(req.vm), port(req.port, false), { hold: req.hold });
      return {};
    }),
    attachVm: unary(async (req: AttachVmRequest) => {
      checkGeneration(req.generation);
      const o = await agent.attach(
        vmNetFromProto(req.vm),
        port(req.port, true)!,
        req.generation,
        req.lifetimeSeconds || undefined,
      );
      return { ack: ackOf(o) };
    }),
    leaveVm: unary(async (req: LeaveVmRequest) => {
      const to = req.forwardToSite ? endpointFromProto(req.forwardToSite, req.forwardTo) : undefined;
      await agent.leave(vmNetFromProto(req.vm), to);
      return {};
    }),
    cleanupVm: unary(async (req: { vm?: PbVmNet }) => {
      await agent.cleanup(vmNetFromProto(req.vm));
      return {};
    }),
    adoptVm: unary(async (req: AdoptVmRequest) => {
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
