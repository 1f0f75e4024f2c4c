// gRPC NetReachService over an Anchor: bindings, handover events, the site directory, and the
// control-plane's migration phases (run by MigrationHooks on remote site agents).
import type * as grpc from "@grpc/grpc-js";
import {
  type CancelNetworkRequest,
  type CleanupNetworkRequest,
  NetReachServiceService,
  type PlaceVmRequest,
  type PrepareNetworkRequest,
  type RegisterSiteRequest,
  type RegisterVmRequest,
  type SwitchOverRequest,
  type UpdateBindingRequest,
  type WatchHandoversRequest,
  type WatchHandoversResponse,
} from "../../../gen/vmhop/v1/netreach.js";
import { ServiceError } from "../../common/errors.js";
import { type ServiceRegistration, unary } from "../../common/grpc/server.js";
import type { Anchor, HandoverEvent } from "../anchor/anchor.js";
import type { SiteDirectory, SiteRecord } from "../anchor/sites.js";
import { type Outcome, stale } from "../binding/cache.js";
import type { Binding } from "../binding/types.js";
import { checkGeneration, checkVmId } from "../binding/types.js";
import { isDataplaneKind } from "../dataplane/tunnel.js";
import { MigrationHooks, type MigrationNet } from "../migration-hooks.js";
import { RemoteSite } from "./clients.js";
import { ackOf, bindingToProto, endpointFromProto, modeFromProto, statusOf } from "./convert.js";

/** A placement's binding lifetime when the request names none. */
const PLACE_LIFETIME_S = 300;

export interface AnchorService extends ServiceRegistration {
  /** Closes the clients of site agents. */
  close(): void;
}

export function anchorService(anchor: Anchor, sites: SiteDirectory): AnchorService {
  const remotes = new Map<string, RemoteSite>();
  const hooks = new MigrationHooks(anchor);

  const site = async (name: string): Promise<RemoteSite> => {
    const r: SiteRecord | null = await sites.get(name);
    if (!r) throw new ServiceError("not-found", `site '${name}' has not registered with the anchor`);
    const key = JSON.stringify(r);
    let remote = remotes.get(key);
    if (!remote) {
      remote = new RemoteSite({ site: r.site, sid6: r.sid6, sid4: r.sid4 }, r.controlAddress);
      remotes.set(key, remote);
    }
    return remote;
  };

  const binding = async (vmId: string): Promise<Binding> => {
    checkVmId(vmId);
    const b = await anchor.cache.get(vmId);
    if (!b) throw new ServiceError("not-found", `vm ${vmId} is not registered`);
    return b;
  };

  const migration = async (
    b: Binding,
    from: string,
    to: string,
    port: string,
    mode: MigrationNet["mode"],
  ): Promise<MigrationNet> => {
    if (from === to) throw new ServiceError("invalid", `vm ${b.vmId}: from and to are both ${to}`);
    return {
      vm: { vmId: b.vmId, homeIpv6: b.homeIpv6, homeIpv4: b.homeIpv4 },
      from: await site(from),
      to: await site(to),
      port,
      mode,
    };
  };

  const implementation = {
    registerVm: unary(async (req: RegisterVmRequest) => {
      const b = req.binding;
      if (!b) throw new ServiceError("invalid", "binding is required");
      const o = await anchor.register({
        vmId: b.vmId,
        mac: b.mac,
        homeIpv6: b.homeIpv6,
        homeIpv4: b.homeIpv4,
        ...endpointFromProto(b.site, b.endpoint),
        generation: b.generation,
        lifetimeSeconds: b.lifetimeSeconds,
      });
      const { binding: out, reason, status } = ackOf(o);
      return { binding: out, reason, status };
    }),
    deregisterVm: unary(async (req: { vmId: string }) => {
      checkVmId(req.vmId);
      const bound = await anchor.cache.get(req.vmId);
      // The site first: should it not answer, the binding (which names it) stays for a retry.
      if (bound && (await sites.get(bound.site)))
        await (await site(bound.site)).leave({
          vmId: bound.vmId,
          homeIpv6: bound.homeIpv6,
          homeIpv4: bound.homeIpv4,
        });
      const b = await anchor.deregister(req.vmId);
      return { binding: b ? bindingToProto(b) : undefined };
    }),
    prepareAttach: unary(async (req: { vmId: string; site: string }) => {
      const o = await anchor.prepareAttach(req.vmId, req.site);
      const { binding: out, reason, status } = ackOf(o);
      return { binding: out, reason, status };
    }),
    updateBinding: unary(async (req: UpdateBindingRequest) =>
      ackOf(
        await anchor.updateBinding({
          vmId: req.vmId,
          ...endpointFromProto(req.site, req.endpoint),
          generation: req.generation,
          lifetimeSeconds: req.lifetimeSeconds || undefined,
          attachedAtMs: req.attachedUnixMs || undefined,
        }),
      ),
    ),
    refreshBinding: unary(async (req: { vmId: string; generation: number; lifetimeSeconds: number }) => {
      const o = await anchor.refresh(req.vmId, req.generation, req.lifetimeSeconds || undefined);
      return {
        binding: o.binding ? bindingToProto(o.binding) : undefined,
        status: statusOf(o),
        reason: o.accepted ? "" : o.reason,
      };
    }),
    listBindings: unary(async () => ({
      bindings: (await anchor.list()).map(bindingToProto),
      dataplane: anchor.dataplane,
    })),
    watchHandovers: (call: grpc.ServerWritableStream<WatchHandoversRequest, WatchHandoversResponse>) => {
      const only = call.request.vmId;
      const send = (e: HandoverEvent) => {
        if (only && e.vmId !== only) return;
        call.write({
          vmId: e.vmId,
          fromSite: e.fromSite,
          toSite: e.toSite,
          generation: e.generation,
          gapMs: e.gapMs,
          timeUnixMs: e.timeUnixMs,
          installMs: e.installMs,
        });
      };
      anchor.on("handover", send);
      const stop = () => anchor.off("handover", send);
      call.on("cancelled", stop);
      call.on("close", stop);
    },
    registerSite: unary(async (req: RegisterSiteRequest) => {
      const s = req.site;
      if (!s) throw new ServiceError("invalid", "site is required");
      const dataplane = s.dataplane || "srv6";
      if (!isDataplaneKind(dataplane))
        throw new ServiceError("invalid", `site ${s.site}: unknown data plane '${dataplane}'`);
      // The anchor encapsulates to the site and the site back to it: both must speak one tunnel.
      if (dataplane !== anchor.dataplane)
        throw new ServiceError(
          "precondition",
          `site ${s.site} uses the ${dataplane} data plane but the anchor uses ${anchor.dataplane}: ` +
            `start every netreach node with --dataplane ${anchor.dataplane}`,
        );
      await sites.put({
        ...endpointFromProto(s.site, s.endpoint),
        controlAddress: s.controlAddress,
        dataplane,
      });
      return {};
    }),
    listSites: unary(async () => ({
      sites: (await sites.list()).map((r) => ({
        site: r.site,
        endpoint: { sid6: r.sid6, sid4: r.sid4 },
        controlAddress: r.controlAddress,
        dataplane: r.dataplane ?? "srv6",
      })),
    })),
    prepareNetwork: unary(async (req: PrepareNetworkRequest) => {
      const b = await binding(req.vmId);
      const m = await migration(b, b.site, req.toSite, req.port, modeFromProto(req.mode));
      await hooks.prepareNetwork(m);
      return { binding: bindingToProto(await binding(req.vmId)) };
    }),
    switchOver: unary(async (req: SwitchOverRequest) => {
      checkGeneration(req.generation);
      const b = await binding(req.vmId);
      // A stale switch-over must not touch the sites either (the old one would stop forwarding).
      if (req.generation <= b.generation) {
        const { refuse, status } = stale(req.generation, b.generation);
        return { ack: ackOf({ accepted: false, status, reason: refuse, binding: b }) };
      }
      const m = await migration(b, req.fromSite || b.site, req.toSite, req.port, modeFromProto(req.mode));
      if (!req.port) throw new ServiceError("invalid", "port (the VM's tap at the destination) is required");
      return { ack: ackOf(await hooks.switchOver(m, req.generation)) };
    }),
    cleanupNetwork: unary(async (req: CleanupNetworkRequest) => {
      const b = await binding(req.vmId);
      await (await site(req.fromSite)).cleanup({ vmId: b.vmId, homeIpv6: b.homeIpv6, homeIpv4: b.homeIpv4 });
      return {};
    }),
    cancelNetwork: unary(async (req: CancelNetworkRequest) => {
      const b = await binding(req.vmId);
      if (req.toSite === b.site)
        throw new ServiceError(
          "precondition",
          `vm ${b.vmId} is bound at ${b.site} (generation ${b.generation}): the switch-over happened`,
        );
      const vm = { vmId: b.vmId, homeIpv6: b.homeIpv6, homeIpv4: b.homeIpv4 };
      const o = await hooks.cancelNetwork({ vm, from: await site(b.site), to: await site(req.toSite) });
      if (!o.accepted) throw new ServiceError("precondition", o.reason);
      return { binding: bindingToProto(o.binding) };
    }),
    placeVm: unary(async (req: PlaceVmRequest) => {
      const at = await site(req.site);
      if (!req.port) throw new ServiceError("invalid", "port (the VM's tap at the site) is required");
      let o: Outcome = await anchor.register({
        vmId: req.vmId,
        mac: req.mac,
        homeIpv6: req.homeIpv6,
        homeIpv4: req.homeIpv4,
        ...at.endpoint,
        generation: req.generation,
        lifetimeSeconds: req.lifetimeSeconds || PLACE_LIFETIME_S,
      });
      // A retry of the same placement: the binding is already this one.
      const b = o.binding;
      if (!o.accepted && b && b.generation === req.generation && b.site === req.site)
        o = { accepted: true, binding: b, previous: b };
      if (!o.accepted) return { ack: ackOf(o) };
      await at.place(
        { vmId: req.vmId, homeIpv6: req.homeIpv6, homeIpv4: req.homeIpv4 },
        req.port,
        req.generation,
        o.binding.lifetimeSeconds,
      );
      return { ack: ackOf(o) };
    }),
  };
  return {
    name: "vmhop.v1.NetReachService",
    definition: NetReachServiceService as unknown as grpc.ServiceDefinition,
    implementation: implementation as unknown as grpc.UntypedServiceImplementation,
    close() {
      for (const r of remotes.values()) r.close();
      remotes.clear();
    },
  };
}
