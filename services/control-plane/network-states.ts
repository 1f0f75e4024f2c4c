// The address part of a migration (netreach) as a table, and whether a migration moves the VM's
// address at all. Pure: the executor records each step (compare-and-set on the migration
// record) before it acts, and a restarted control-plane resumes from the recorded state.
//
//   pending → preparing → prepared → switching → switched → settled
//   pending, preparing, prepared → rolled_back (the migration failed before its switch-over)
//   any state not final → failed (the reason says which step)
//
// pending: nothing done yet; preparing: PrepareNetwork may be under way; prepared: the
// destination site holds the VM's addresses (bicast, if the mode does); switching: SwitchOver may be under way (the VM runs at
// the destination); switched: the binding points at the destination; settled: the old site's
// forwarding pointer is gone. A migration that does not move the address is `skipped`.

export type NetworkState =
  | "skipped"
  | "pending"
  | "preparing"
  | "prepared"
  | "switching"
  | "switched"
  | "settled"
  | "rolled_back"
  | "failed";

export type NetworkEvent = "prepare" | "prepared" | "switch" | "switched" | "settled" | "rollback" | "fail";

export const NETWORK_TRANSITIONS: Record<NetworkState, Partial<Record<NetworkEvent, NetworkState>>> = {
  skipped: {},
  pending: { prepare: "preparing", rollback: "rolled_back", fail: "failed" },
  preparing: { prepared: "prepared", rollback: "rolled_back", fail: "failed" },
  prepared: { switch: "switching", rollback: "rolled_back", fail: "failed" },
  switching: { switched: "switched", fail: "failed" },
  switched: { settled: "settled", fail: "failed" },
  settled: {},
  rolled_back: {},
  failed: {},
};

export class NetworkTransitionError extends Error {
  constructor(
    readonly from: NetworkState,
    readonly event: NetworkEvent,
  ) {
    super(`network state ${from} does not allow ${event}`);
    this.name = "NetworkTransitionError";
  }
}

export function nextNetwork(from: NetworkState, event: NetworkEvent): NetworkState {
  const to = NETWORK_TRANSITIONS[from][event];
  if (!to) throw new NetworkTransitionError(from, event);
  return to;
}

/** The migration record's `network` part. */
export interface NetworkRecord {
  state: NetworkState;
  /** Why it was skipped, rolled back or failed. */
  reason: string;
  /** The switch-over's binding generation: the migration's fencing token. */
  generation: number;
  /** HandoverMode enum number of netreach.proto (0: the anchor's default). */
  mode: number;
  from_site: string;
  to_site: string;
  /** The VM's tap at the destination. */
  port: string;
  entered_unix_ms: Partial<Record<NetworkState, number>>;
}

/** The VM's home addresses (control.proto VmNetwork). */
export interface VmAddresses {
  home_ipv6: string[];
  home_ipv4: string[];
}

export function hasAddresses(a: VmAddresses | undefined): a is VmAddresses {
  return !!a && a.home_ipv6.length + a.home_ipv4.length > 0;
}

export interface NetworkPlanInput {
  netreach: boolean;
  addresses?: VmAddresses;
  /** The VM's tap (VmSpec nic_tap); the same name at every site. */
  tap: string;
  fromSite: string;
  toSite: string;
  mode: number;
  generation: number;
}

/** The address part a new migration starts with: `pending`, or `skipped` and why. */
export function planNetwork(p: NetworkPlanInput, nowMs: number): NetworkRecord {
  const base = {
    reason: "",
    generation: p.generation,
    mode: p.mode,
    from_site: p.fromSite,
    to_site: p.toSite,
    port: p.tap,
  };
  const skip = (reason: string): NetworkRecord => ({
    ...base,
    state: "skipped",
    reason,
    entered_unix_ms: { skipped: nowMs },
  });
  if (!p.netreach) return skip("netreach not configured");
  if (!hasAddresses(p.addresses)) return skip("VM has no home addresses");
  if (!p.tap) return skip("VM has no tap (nic_tap)");
  if (!p.fromSite || !p.toSite) return skip("a host has no site");
  if (p.fromSite === p.toSite) return skip("same site");
  return { ...base, state: "pending", entered_unix_ms: { pending: nowMs } };
}

/** True while the destination may hold prepared state that a rollback must undo. */
export function needsRollback(n: NetworkRecord | undefined): boolean {
  return n?.state === "preparing" || n?.state === "prepared";
}
