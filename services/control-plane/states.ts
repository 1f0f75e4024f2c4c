// The migration state machine as a table. Pure: the executor persists each transition
// (compare-and-set on the migration record) and a restarted control-plane resumes from it.
//
//   pending → preparing → migrating → switched → completing → relocating → done
//   any state before switched → failed | cancelled (the VM keeps running at the source)
//   switched, completing, relocating → failed (the VM runs at the destination but its
//     migration broke — memory, the registry update or the disk's relocation: reported, not hidden)
//
// preparing: the destination's disk (a proxy export of the source's, LAZY storage) and its
//   waiting QEMU; migrating: memory before the switch-over; switched: the VM runs at the
//   destination (the background disk copy starts); completing: every page is there, the
//   registry moves the VM; relocating: every block is pulled, the export promoted and the
//   source's released.

export type MigrationState =
  | "pending"
  | "preparing"
  | "migrating"
  | "switched"
  | "completing"
  | "relocating"
  | "done"
  | "failed"
  | "cancelled";

export type MigrationEvent =
  | "prepare" // destination page-server asked to PrepareIncoming
  | "start" // source page-server asked to StartMigration
  | "switch" // the VM runs at the destination (post-copy began, or the migration completed)
  | "complete" // the page-servers report the migration completed
  | "relocate" // the VM registry names the destination as the VM's host
  | "finish" // the disk is local at the destination (or was shared): nothing is left at the source
  | "fail"
  | "cancel";

export const TRANSITIONS: Record<MigrationState, Partial<Record<MigrationEvent, MigrationState>>> = {
  pending: { prepare: "preparing", fail: "failed", cancel: "cancelled" },
  preparing: { start: "migrating", fail: "failed", cancel: "cancelled" },
  migrating: { switch: "switched", complete: "completing", fail: "failed", cancel: "cancelled" },
  switched: { complete: "completing", fail: "failed" },
  completing: { relocate: "relocating", fail: "failed" },
  relocating: { finish: "done", fail: "failed" },
  done: {},
  failed: {},
  cancelled: {},
};

export const FINAL_STATES: readonly MigrationState[] = ["done", "failed", "cancelled"];

export function isFinal(s: MigrationState): boolean {
  return FINAL_STATES.includes(s);
}

/** True once the VM may be running at the destination: cancelling is then refused. */
export function pastSwitch(s: MigrationState): boolean {
  return s === "switched" || s === "completing" || s === "relocating" || s === "done";
}

export class TransitionError extends Error {
  constructor(
    readonly from: MigrationState,
    readonly event: MigrationEvent,
  ) {
    super(`migration state ${from} does not allow ${event}`);
    this.name = "TransitionError";
  }
}

/** The state after `event`, or a TransitionError when the table has no such edge. */
export function next(from: MigrationState, event: MigrationEvent): MigrationState {
  const to = TRANSITIONS[from][event];
  if (!to) throw new TransitionError(from, event);
  return to;
}
