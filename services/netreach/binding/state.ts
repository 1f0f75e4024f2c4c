// The binding state machine as a table. A missing entry means the event is refused in that state.
import type { BindingState } from "./types.js";

export type BindingEvent = "prepare" | "update" | "refresh" | "expire" | "cancel";

export const transitions: Readonly<Record<BindingState, Partial<Record<BindingEvent, BindingState>>>> = {
  active: { prepare: "moving", update: "active", refresh: "active", expire: "expired" },
  moving: { prepare: "moving", update: "active", refresh: "moving", expire: "expired", cancel: "active" },
  // An expired binding comes back only through an update with a newer generation.
  expired: { update: "active" },
};

export function nextState(from: BindingState, event: BindingEvent): BindingState | undefined {
  return transitions[from][event];
}
