// netreach's part in a migration, one method per control-plane phase. Plain calls on the anchor
// and on site agents: in-process (SiteAgent) or remote (grpc/clients.ts RemoteSite), the way the
// anchor's gRPC PrepareNetwork / SwitchOver / CleanupNetwork run them.
//   prepare network  → before switch-over: anchor marks the move, destination site prepared
//   switch-over      → the VM runs at the destination: binding update, old site forwards or drops
//   cleanup          → the binding settled: the old site's forwarding pointer goes
//   cancel network   → rolled back before switch-over: what prepare network did is undone
import { ServiceError } from "../common/errors.js";
import type { Outcome } from "./binding/cache.js";
import type { SiteEndpoint } from "./binding/types.js";
import type { PrepareOptions, VmNet } from "./site/agent.js";

/**
 * bbm: break-before-make, the destination is prepared only once the VM runs there;
 * mbb: make-before-break, prepared before switch-over; mbb-fp: plus a forwarding pointer at the
 * old site for what is still in flight to it; mbb-bicast: the anchor sends every packet to both
 * sites from preparation until the binding update, so nothing takes the old site's detour.
 */
export type HandoverMode = "bbm" | "mbb" | "mbb-fp" | "mbb-bicast";

export const HANDOVER_MODES: readonly HandoverMode[] = ["bbm", "mbb", "mbb-fp", "mbb-bicast"];

export interface AnchorControl {
  prepareAttach(vmId: string, site: string): Promise<Outcome>;
  startBicast(vmId: string, to: SiteEndpoint): Promise<void>;
  cancelMove(vmId: string, site: string): Promise<Outcome>;
}

/** What the hooks need of a site agent (SiteAgent in-process, RemoteSite over gRPC). */
export interface SiteControl {
  readonly endpoint: SiteEndpoint;
  prepare(vm: VmNet, port?: string, opts?: PrepareOptions): Promise<void>;
  attach(vm: VmNet, port: string, generation: number, lifetimeSeconds?: number): Promise<Outcome>;
  leave(vm: VmNet, forwardTo?: SiteEndpoint): Promise<void>;
  /** Optional: the forwarding pointer staged before switch-over (SiteAgent.stageForwarding). */
  stageForwarding?(vm: VmNet, to: SiteEndpoint): Promise<void>;
  cleanup(vm: VmNet): Promise<void>;
}

export interface MigrationNet {
  vm: VmNet;
  from: SiteControl;
  to: SiteControl;
  /** The VM's port at the destination (a tap QEMU will use). */
  port: string;
  mode: HandoverMode;
}

export class MigrationHooks {
  constructor(private readonly anchor: AnchorControl) {}

  async prepareNetwork(m: MigrationNet): Promise<void> {
    if (m.mode === "bbm") return;
    const o = await this.anchor.prepareAttach(m.vm.vmId, m.to.endpoint.site);
    if (!o.accepted)
      throw new ServiceError(
        "precondition",
        `cannot prepare ${m.vm.vmId} at ${m.to.endpoint.site}: ${o.reason}`,
      );
    const bicast = m.mode === "mbb-bicast";
    // mbb-fp: the old site's pointer is staged now, so it works from the instant the VM leaves.
    await Promise.all([
      m.to.prepare(m.vm, m.port, { hold: bicast }),
      m.mode === "mbb-fp" ? m.from.stageForwarding?.(m.vm, m.to.endpoint) : undefined,
    ]);
    // Only now: the destination holds (drops) the copies until the VM runs there.
    if (bicast) await this.anchor.startBicast(m.vm.vmId, m.to.endpoint);
  }

  /** Call as soon as the VM runs at the destination; `generation` comes from the control-plane. */
  async switchOver(m: MigrationNet, generation: number): Promise<Outcome> {
    const [outcome] = await Promise.all([
      m.to.attach(m.vm, m.port, generation),
      m.from.leave(m.vm, m.mode === "mbb-fp" ? m.to.endpoint : undefined),
    ]);
    return outcome;
  }

  /**
   * The move will not happen (rolled back before switch-over): the anchor stops bicasting and
   * ends "moving", the destination forgets the VM (holds, port routes, reverse tunnel), the old
   * site drops a staged forwarding pointer. The VM keeps its binding where it runs. Idempotent.
   */
  async cancelNetwork(m: Omit<MigrationNet, "port" | "mode">): Promise<Outcome> {
    const o = await this.anchor.cancelMove(m.vm.vmId, m.to.endpoint.site);
    if (!o.accepted) return o;
    if (o.binding.site === m.to.endpoint.site)
      return {
        accepted: false,
        status: "wrong-state",
        reason: `vm ${m.vm.vmId} is bound at ${m.to.endpoint.site} already (generation ${o.binding.generation}): the switch-over happened`,
        binding: o.binding,
      };
    await Promise.all([m.to.leave(m.vm), m.from.cleanup(m.vm)]);
    return o;
  }

  async cleanup(m: MigrationNet): Promise<void> {
    await m.from.cleanup(m.vm);
  }
}
