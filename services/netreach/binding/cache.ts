// The anchor's binding cache: one durable record per VM, changed only through compare-and-set
// so concurrent writers (or a restarted anchor) never lose an update. A binding update whose
// generation is not newer than the stored one is refused and changes nothing, as RFC 6275 /
// RFC 5213 refuse a sequence number outside the window.
import type { BindingKv } from "./kv.js";
import { type BindingEvent, nextState } from "./state.js";
import {
  type Binding,
  BindingError,
  checkGeneration,
  checkLifetime,
  checkRegister,
  checkUpdate,
  checkVmId,
  type RegisterRequest,
  type UpdateRequest,
} from "./types.js";

/** Why a change was refused (the ack's status, as a PMIPv6 Proxy Binding Ack code). */
export type RefusedStatus = "stale-generation" | "not-registered" | "wrong-state" | "not-current";

export type Outcome =
  | { accepted: true; binding: Binding; previous: Binding | null }
  | { accepted: false; status: RefusedStatus; reason: string; binding: Binding | null };

type Step = { next: Binding } | { refuse: string; status: RefusedStatus };

const notRegistered = (vmId: string): Step => ({
  refuse: `vm ${vmId} is not registered`,
  status: "not-registered",
});
/** The refusal of a generation that is not newer than the binding's (`have`). */
export const stale = (g: number, have: number): { refuse: string; status: RefusedStatus } => ({
  refuse: `stale generation ${g} (have ${have})`,
  status: "stale-generation",
});

export interface BindingCacheOptions {
  /** Key prefix in the store; default "netreach/binding/". */
  prefix?: string;
  now?: () => number;
}

export class BindingCache {
  private readonly prefix: string;
  private readonly now: () => number;

  constructor(
    private readonly kv: BindingKv,
    opts: BindingCacheOptions = {},
  ) {
    this.prefix = opts.prefix ?? "netreach/binding/";
    this.now = opts.now ?? Date.now;
  }

  private key(vmId: string): string {
    return this.prefix + vmId;
  }

  async get(vmId: string): Promise<Binding | null> {
    checkVmId(vmId);
    const raw = await this.kv.get(this.key(vmId));
    return raw === null ? null : (JSON.parse(raw) as Binding);
  }

  async list(): Promise<Binding[]> {
    return (await this.kv.scan(this.prefix)).map(([, v]) => JSON.parse(v) as Binding);
  }

  /** Read, decide, compare-and-set; retried when another writer got there first. */
  private async mutate(vmId: string, decide: (cur: Binding | null) => Step): Promise<Outcome> {
    const key = this.key(vmId);
    for (let attempt = 0; attempt < 16; attempt++) {
      const raw = await this.kv.get(key);
      const cur = raw === null ? null : (JSON.parse(raw) as Binding);
      const step = decide(cur);
      if ("refuse" in step)
        return { accepted: false, status: step.status, reason: step.refuse, binding: cur };
      if (await this.kv.compareAndSet(key, raw, JSON.stringify(step.next)))
        return { accepted: true, binding: step.next, previous: cur };
    }
    throw new BindingError(`binding of ${vmId}: too many concurrent writers`);
  }

  private transition(cur: Binding, event: BindingEvent): Step | null {
    const state = nextState(cur.state, event);
    return state ? null : { refuse: `${event} refused in state ${cur.state}`, status: "wrong-state" };
  }

  /** First registration (or a re-registration with a newer generation). */
  register(req: RegisterRequest): Promise<Outcome> {
    checkRegister(req);
    return this.mutate(req.vmId, (cur) => {
      if (cur && req.generation <= cur.generation) return stale(req.generation, cur.generation);
      return {
        next: {
          vmId: req.vmId,
          mac: req.mac,
          homeIpv6: [...req.homeIpv6],
          homeIpv4: [...req.homeIpv4],
          site: req.site,
          sid6: req.sid6,
          sid4: req.sid4,
          generation: req.generation,
          lifetimeSeconds: req.lifetimeSeconds,
          expiresAtMs: this.now() + req.lifetimeSeconds * 1000,
          state: "active",
        },
      };
    });
  }

  /** Re-points the binding to another site; refused unless the generation is newer. */
  update(req: UpdateRequest): Promise<Outcome> {
    checkUpdate(req);
    return this.mutate(req.vmId, (cur) => {
      if (!cur) return notRegistered(req.vmId);
      if (req.generation <= cur.generation) return stale(req.generation, cur.generation);
      const refused = this.transition(cur, "update");
      if (refused) return refused;
      const lifetimeSeconds = req.lifetimeSeconds ?? cur.lifetimeSeconds;
      const { movingTo: _, ...rest } = cur;
      return {
        next: {
          ...rest,
          site: req.site,
          sid6: req.sid6,
          sid4: req.sid4,
          generation: req.generation,
          lifetimeSeconds,
          expiresAtMs: this.now() + lifetimeSeconds * 1000,
          state: "active",
        },
      };
    });
  }

  /** Marks the VM as moving to a site that is being prepared (the data plane is unchanged). */
  prepare(vmId: string, site: string): Promise<Outcome> {
    checkVmId(vmId);
    return this.mutate(vmId, (cur) => {
      if (!cur) return notRegistered(vmId);
      const refused = this.transition(cur, "prepare");
      if (refused) return refused;
      return { next: { ...cur, state: "moving", movingTo: site } };
    });
  }

  /** Ends a prepared move that did not happen. */
  cancel(vmId: string): Promise<Outcome> {
    checkVmId(vmId);
    return this.mutate(vmId, (cur) => {
      if (!cur) return notRegistered(vmId);
      const refused = this.transition(cur, "cancel");
      if (refused) return refused;
      const { movingTo: _, ...rest } = cur;
      return { next: { ...rest, state: "active" } };
    });
  }

  /** Extends the lifetime of the current binding; the generation must be the current one. */
  refresh(vmId: string, generation: number, lifetimeSeconds?: number): Promise<Outcome> {
    checkVmId(vmId);
    checkGeneration(generation);
    if (lifetimeSeconds !== undefined) checkLifetime(lifetimeSeconds);
    return this.mutate(vmId, (cur) => {
      if (!cur) return notRegistered(vmId);
      if (generation !== cur.generation)
        return {
          refuse: `refresh for generation ${generation}, current is ${cur.generation}`,
          status: "not-current",
        };
      const refused = this.transition(cur, "refresh");
      if (refused) return refused;
      const lt = lifetimeSeconds ?? cur.lifetimeSeconds;
      return { next: { ...cur, lifetimeSeconds: lt, expiresAtMs: this.now() + lt * 1000 } };
    });
  }

  /** Moves every binding whose lifetime ran out to `expired`; returns them. */
  async expireDue(): Promise<Binding[]> {
    const out: Binding[] = [];
    for (const b of await this.list()) {
      if (b.state === "expired" || b.expiresAtMs > this.now()) continue;
      const o = await this.mutate(b.vmId, (cur) => {
        if (!cur || cur.expiresAtMs > this.now()) return { refuse: "not due", status: "wrong-state" };
        const refused = this.transition(cur, "expire");
        if (refused) return refused;
        const { movingTo: _, ...rest } = cur;
        return { next: { ...rest, state: "expired" } };
      });
      if (o.accepted) out.push(o.binding);
    }
    return out;
  }

  /** Removes the VM's binding; returns it (null when there was none). */
  async deregister(vmId: string): Promise<Binding | null> {
    const cur = await this.get(vmId);
    if (!cur) return null;
    await this.kv.del(this.key(vmId));
    return cur;
  }
}
