// A host's power through its driver (services/power), under the control-plane's rules: a host is
// switched off only once no VM is on it and no migration runs from or to it, and is marked asleep
// (taking no new VM) before its driver is asked; a wake counts only once the driver says `on` and
// the host's page-server answers, else the host is marked `failed` with the reason and stays
// asleep. Without a driver, on/off are bookkeeping. Every action is recorded on the host.
import type { Logger } from "../common/log.js";
import type { Store } from "../common/store/index.js";
import { inSpan } from "../common/tracing.js";
import { makeDriver } from "../power/config.js";
import { Credentials } from "../power/credentials.js";
import type { PowerDriver, PowerState } from "../power/driver.js";
import { ControlError } from "./control-error.js";
import {
  type HostPowerState,
  type HostRecord,
  KEYS,
  POWER_ACTIONS_KEPT,
  type PowerActionRecord,
  readJson,
  update,
} from "./records.js";

export type PowerAction = "on" | "off" | "status";

export interface HostPowerOptions {
  credentials?: Credentials;
  /** How long a woken host has to come up (driver `on` and its page-server answering); default 300 s. */
  wakeTimeoutMs?: number;
  /** How long a host has to report `off` after a shutdown request; default 300 s. */
  offTimeoutMs?: number;
  /** Between status polls while waiting; default 1 s. */
  pollMs?: number;
}

export interface HostPowerDeps {
  /** The VMs on the host or migrating from or to it (those keep it on). */
  vmsKeepingOn(hostId: string): Promise<string[]>;
  /** Resolves when the host's page-server answers (bounded by the page-server client). */
  reachable(host: HostRecord): Promise<void>;
}

export interface PowerResult {
  host: HostRecord;
  /** on/off: the state reached; status: the driver's answer. */
  state: string;
}

const errText = (err: unknown) => (err instanceof Error ? err.message : String(err));

export class HostPower {
  private readonly creds: Credentials;
  private readonly wakeMs: number;
  private readonly offMs: number;
  private readonly pollMs: number;

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
    private readonly deps: HostPowerDeps,
    opts: HostPowerOptions = {},
  ) {
    this.creds = opts.credentials ?? Credentials.load(undefined);
    this.wakeMs = opts.wakeTimeoutMs ?? 300_000;
    this.offMs = opts.offTimeoutMs ?? 300_000;
    this.pollMs = opts.pollMs ?? 1000;
  }

  /** One power action, as a span of its own (`host power on`: host, result or error). */
  act(hostId: string, action: PowerAction): Promise<PowerResult> {
    const actions = { on: this.wake, off: this.sleep, status: this.status } as const;
    const run = Object.hasOwn(actions, action) ? actions[action] : undefined;
    if (!run)
      return Promise.reject(
        new ControlError("invalid", `power action must be on, off or status, got ${JSON.stringify(action)}`),
      );
    return inSpan(`host power ${action}`, { "vmhop.host.id": hostId }, async (span) => {
      const r = await run.call(this, hostId);
      span.setAttribute("vmhop.power.result", r.state);
      return r;
    });
  }

  private async read(hostId: string): Promise<HostRecord> {
    if (!hostId) throw new ControlError("invalid", "host_id is required");
    const h = await readJson<HostRecord>(this.store, KEYS.host(hostId));
    if (!h) throw new ControlError("not-found", `unknown host ${hostId}`);
    return h.value;
  }

  private driver(h: HostRecord): PowerDriver | undefined {
    return h.power ? makeDriver(h.host_id, h.power, this.creds) : undefined;
  }

  /** One change of the host record, with the action appended when given. */
  private change(
    hostId: string,
    fields: Partial<HostRecord>,
    action?: Omit<PowerActionRecord, "time_unix_ms">,
    check?: (cur: HostRecord) => void,
  ): Promise<HostRecord> {
    return update<HostRecord>(this.store, KEYS.host(hostId), (cur) => {
      if (!cur) throw new ControlError("not-found", `unknown host ${hostId}`);
      check?.(cur);
      const now = Date.now();
      const next: HostRecord = { ...cur, ...fields };
      if (fields.power_state && fields.power_state !== cur.power_state) next.power_changed_unix_ms = now;
      if (action) {
        next.power_actions = [...(cur.power_actions ?? []), { time_unix_ms: now, ...action }].slice(
          -POWER_ACTIONS_KEPT,
        );
        this.log.info("host power", { host: hostId, ...action });
      }
      return next;
    });
  }

  /** A power action already under way on the host (one at a time; a stale one, e.g. from a crash, is taken over). */
  private refuseIfBusy(cur: HostRecord): void {
    const s = cur.power_state;
    if (s !== "waking" && s !== "stopping") return;
    const since = cur.power_changed_unix_ms ?? 0;
    if (Date.now() - since < Math.max(this.wakeMs, this.offMs) + 60_000)
      throw new ControlError(
        "precondition",
        `host ${cur.host_id} is ${s} since ${new Date(since).toISOString()}: wait for it`,
      );
  }

  private async busyRefusal(hostId: string): Promise<ControlError | undefined> {
    const vms = await this.deps.vmsKeepingOn(hostId);
    return vms.length
      ? new ControlError(
          "precondition",
          `host ${hostId} still has VMs (${vms.join(", ")}) on it or migrating from or to it: it cannot be switched off`,
        )
      : undefined;
  }

  async sleep(hostId: string): Promise<PowerResult> {
    const h = await this.read(hostId);
    // Already switched off: not asked again (a soft shutdown of a machine that is off can fail).
    if (h.asleep && (h.power_state === "off" || (!h.power && h.power_state !== "waking")))
      return {
        host: await this.change(hostId, {}, { action: "off", result: "off", error: "" }),
        state: "off",
      };
    const refusal = await this.busyRefusal(hostId);
    if (refusal) throw refusal;
    const driver = this.driver(h);
    // Asleep first: from here no VM is created on the host and no migration goes to it.
    await this.change(
      hostId,
      { asleep: true, power_state: driver ? "stopping" : "off", power_error: "" },
      undefined,
      (cur) => this.refuseIfBusy(cur),
    );
    // A migration recorded while the host was being marked: it stays on.
    const late = await this.busyRefusal(hostId);
    if (late) {
      await this.change(hostId, {
        asleep: h.asleep,
        power_state: h.power_state ?? (h.asleep ? "off" : "on"),
      });
      throw late;
    }
    if (!driver) {
      const host = await this.change(hostId, {}, { action: "off", result: "off", error: "" });
      return { host, state: "off" };
    }
    try {
      await driver.off();
      if (driver.reportsStatus) await this.waitFor(driver, "off", this.offMs, undefined);
    } catch (err) {
      const why = errText(err);
      await this.change(
        hostId,
        { power_state: "failed", power_error: `switching off: ${why}` },
        { action: "off", result: "failed", error: why },
      );
      throw new ControlError("unavailable", `host ${hostId} did not switch off: ${why}`);
    }
    const host = await this.change(
      hostId,
      { power_state: "off" },
      { action: "off", result: "off", error: "" },
    );
    return { host, state: "off" };
  }

  async wake(hostId: string): Promise<PowerResult> {
    const h = await this.read(hostId);
    const driver = this.driver(h);
    if (!driver) {
      const host = await this.change(
        hostId,
        { asleep: false, power_state: "on", power_error: "" },
        { action: "on", result: "on", error: "" },
      );
      return { host, state: "on" };
    }
    // Stays asleep (no VM comes) until it is up.
    await this.change(hostId, { power_state: "waking", power_error: "" }, undefined, (cur) =>
      this.refuseIfBusy(cur),
    );
    try {
      await driver.on();
      await this.waitFor(driver, "on", this.wakeMs, h);
    } catch (err) {
      const why = errText(err);
      await this.change(
        hostId,
        { asleep: true, power_state: "failed", power_error: `waking: ${why}` },
        { action: "on", result: "failed", error: why },
      );
      throw new ControlError("unavailable", `host ${hostId} did not wake: ${why}`);
    }
    const host = await this.change(
      hostId,
      { asleep: false, power_state: "on" },
      { action: "on", result: "on", error: "" },
    );
    return { host, state: "on" };
  }

  async status(hostId: string): Promise<PowerResult> {
    const h = await this.read(hostId);
    const driver = this.driver(h);
    let state: PowerState = "unknown";
    try {
      if (driver) state = await driver.status();
    } catch (err) {
      await this.change(hostId, {}, { action: "status", result: "failed", error: errText(err) });
      throw err;
    }
    const host = await this.change(hostId, {}, { action: "status", result: state, error: "" });
    return { host, state };
  }

  /**
   * Polls until the driver reports `want` (a driver without status: at once) and, waking, the
   * host's page-server answers; throws the last reason when `ms` runs out.
   */
  private async waitFor(
    driver: PowerDriver,
    want: PowerState,
    ms: number,
    host: HostRecord | undefined,
  ): Promise<void> {
    const deadline = Date.now() + ms;
    let last = "";
    for (;;) {
      try {
        const s = driver.reportsStatus ? await driver.status() : want;
        if (s !== want) last = `the driver reports ${s}`;
        else if (!host) return;
        else {
          await this.deps.reachable(host);
          return;
        }
      } catch (err) {
        last = errText(err);
      }
      if (Date.now() >= deadline) throw new Error(`not ${want} within ${Math.round(ms / 1000)} s (${last})`);
      await new Promise((r) => setTimeout(r, this.pollMs));
    }
  }
}

export type { HostPowerState };
