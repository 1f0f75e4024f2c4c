// VM lifecycle as an explicit transition table. Anything not listed is illegal.
import { ServiceError } from "../../common/errors.js";

export type VmState =
  | "defined" // spec known, no QEMU
  | "starting" // QEMU spawned, QMP not yet up
  | "running"
  | "paused"
  | "incoming" // destination QEMU waiting for a migration stream
  | "postmigrate" // source QEMU after its state moved away
  | "stopping"
  | "stopped" // QEMU ended as asked (or the guest powered off)
  | "crashed"; // QEMU ended unexpectedly

export type VmEvent =
  | "spawn"
  | "up-running"
  | "up-paused"
  | "up-incoming"
  | "up-postmigrate" // adopted after a page-server restart
  | "pause"
  | "resume"
  | "migrated-in" // destination resumed with the migrated state
  | "migrated-out"
  | "stop"
  | "exit"; // QEMU process ended: to stopped when stopping, else handled as "crash"

const live: VmState[] = ["starting", "running", "paused", "incoming", "postmigrate"];

export const transitions: Record<VmState, Partial<Record<VmEvent | "crash", VmState>>> = {
  defined: { spawn: "starting" },
  starting: {
    "up-running": "running",
    "up-paused": "paused",
    "up-incoming": "incoming",
    "up-postmigrate": "postmigrate",
    stop: "stopping",
    crash: "crashed",
  },
  running: {
    pause: "paused",
    "migrated-out": "postmigrate",
    stop: "stopping",
    crash: "crashed",
    exit: "stopped",
  },
  paused: {
    resume: "running",
    "migrated-out": "postmigrate",
    stop: "stopping",
    crash: "crashed",
    exit: "stopped",
  },
  incoming: { "migrated-in": "running", stop: "stopping", crash: "crashed" },
  postmigrate: { stop: "stopping", crash: "crashed", exit: "stopped" },
  stopping: { exit: "stopped", crash: "stopped" },
  stopped: {},
  crashed: {},
};

export class IllegalTransitionError extends ServiceError {
  constructor(
    readonly from: VmState,
    readonly event: string,
  ) {
    super("precondition", `VM in state ${from} cannot ${event}`);
    this.name = "IllegalTransitionError";
  }
}

export function nextState(from: VmState, event: VmEvent | "crash"): VmState {
  const to = transitions[from][event];
  if (!to) throw new IllegalTransitionError(from, event);
  return to;
}

export function isLive(s: VmState): boolean {
  return live.includes(s);
}
