// Between the binding cache's plain data and NetReachService messages. Pure functions.
import {
  BindingState,
  BindingStatus,
  type Binding as PbBinding,
  HandoverMode as PbMode,
  type VmNet as PbVmNet,
  type TunnelEndpoint,
  type UpdateBindingResponse,
} from "../../../gen/vmhop/v1/netreach.js";
import { ServiceError } from "../../common/errors.js";
import type { Outcome, RefusedStatus } from "../binding/cache.js";
import { type Binding, checkEndpoint, type SiteEndpoint } from "../binding/types.js";
import type { HandoverMode } from "../migration-hooks.js";
import type { VmNet } from "../site/agent.js";

const STATE: Record<Binding["state"], BindingState> = {
  active: BindingState.BINDING_STATE_ACTIVE,
  moving: BindingState.BINDING_STATE_MOVING,
  expired: BindingState.BINDING_STATE_EXPIRED,
};

const REFUSED: Record<RefusedStatus, BindingStatus> = {
  "stale-generation": BindingStatus.BINDING_STATUS_STALE_GENERATION,
  "not-registered": BindingStatus.BINDING_STATUS_NOT_REGISTERED,
  "wrong-state": BindingStatus.BINDING_STATUS_WRONG_STATE,
  "not-current": BindingStatus.BINDING_STATUS_NOT_CURRENT,
};

const REFUSED_BACK = new Map(Object.entries(REFUSED).map(([k, v]) => [v, k as RefusedStatus]));

const MODE: Partial<Record<PbMode, HandoverMode>> = {
  [PbMode.HANDOVER_MODE_UNSPECIFIED]: "mbb-bicast",
  [PbMode.HANDOVER_MODE_BBM]: "bbm",
  [PbMode.HANDOVER_MODE_MBB]: "mbb",
  [PbMode.HANDOVER_MODE_MBB_FP]: "mbb-fp",
  [PbMode.HANDOVER_MODE_MBB_BICAST]: "mbb-bicast",
};

export function bindingToProto(b: Binding): PbBinding {
  return {
    vmId: b.vmId,
    mac: b.mac,
    homeIpv6: b.homeIpv6,
    homeIpv4: b.homeIpv4,
    site: b.site,
    endpoint: { sid6: b.sid6, sid4: b.sid4 },
    generation: b.generation,
    lifetimeSeconds: b.lifetimeSeconds,
    expiresUnixMs: b.expiresAtMs,
    state: STATE[b.state],
    movingTo: b.movingTo ?? "",
  };
}

/** The parts of a proto binding a registration needs; the endpoint is required. */
export function endpointFromProto(site: string, e: TunnelEndpoint | undefined): SiteEndpoint {
  // Checked here so every RPC that carries an endpoint refuses a bad one the same way.
  if (!e) throw new ServiceError("invalid", `site '${site}': endpoint (sid6, sid4) is required`);
  const out = { site, sid6: e.sid6, sid4: e.sid4 };
  checkEndpoint(out);
  return out;
}

export function statusOf(o: Outcome): BindingStatus {
  return o.accepted ? BindingStatus.BINDING_STATUS_ACCEPTED : REFUSED[o.status];
}

/** An outcome as an ack: accepted, or refused with a status and a reason. */
export function ackOf(o: Outcome): UpdateBindingResponse {
  return {
    binding: o.binding ? bindingToProto(o.binding) : undefined,
    accepted: o.accepted,
    reason: o.accepted ? "" : o.reason,
    status: statusOf(o),
  };
}

/** The anchor's ack as the site agent's outcome (the binding's own fields as far as it needs them). */
export function outcomeFromAck(ack: UpdateBindingResponse | undefined): Outcome {
  if (!ack) throw new Error("anchor answered without an ack");
  const binding = ack.binding ? bindingFromProto(ack.binding) : null;
  if (ack.accepted) {
    if (!binding) throw new Error("anchor accepted without a binding");
    return { accepted: true, binding, previous: null };
  }
  return {
    accepted: false,
    status: REFUSED_BACK.get(ack.status) ?? "wrong-state",
    reason: ack.reason,
    binding,
  };
}

const STATE_BACK = new Map(Object.entries(STATE).map(([k, v]) => [v, k as Binding["state"]]));

export function bindingFromProto(b: PbBinding): Binding {
  return {
    vmId: b.vmId,
    mac: b.mac,
    homeIpv6: b.homeIpv6,
    homeIpv4: b.homeIpv4,
    site: b.site,
    sid6: b.endpoint?.sid6 ?? "",
    sid4: b.endpoint?.sid4 ?? "",
    generation: b.generation,
    lifetimeSeconds: b.lifetimeSeconds,
    expiresAtMs: b.expiresUnixMs,
    state: STATE_BACK.get(b.state) ?? "active",
    ...(b.movingTo ? { movingTo: b.movingTo } : {}),
  };
}

export function modeFromProto(m: PbMode): HandoverMode {
  const mode = MODE[m];
  if (!mode) throw new ServiceError("invalid", `unknown handover mode ${m}`);
  return mode;
}

export function vmNetFromProto(v: PbVmNet | undefined): VmNet {
  if (!v?.vmId) throw new ServiceError("invalid", "vm (vm_id, home addresses) is required");
  return { vmId: v.vmId, homeIpv6: v.homeIpv6, homeIpv4: v.homeIpv4 };
}

export function vmNetToProto(v: VmNet): PbVmNet {
  return { vmId: v.vmId, homeIpv6: v.homeIpv6, homeIpv4: v.homeIpv4 };
}
