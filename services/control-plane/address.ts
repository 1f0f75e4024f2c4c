// Moves a migrating VM's home addresses with it through the netreach anchor: prepare at the
// destination, switch over the moment the VM runs there, clean up the old site once the binding
// settled, or undo the preparation when the migration rolls back. Each step is recorded in the
// migration's `network` part before it acts (network-states.ts) and is idempotent, so a
// restarted control-plane repeats whatever may have been cut short.
import { BindingStatus } from "../../gen/vmhop/v1/netreach.js";
import type { Logger } from "../common/log.js";
import type { Store } from "../common/store/index.js";
import type { MoveRequest, NetreachAnchor } from "./netreach-client.js";
import { type NetworkEvent, type NetworkRecord, NetworkTransitionError } from "./network-states.js";
import { KEYS, type MigrationRecord, networkStep, readJson } from "./records.js";

export class AddressMover {
  constructor(
    private readonly store: Store,
    private readonly anchor: NetreachAnchor | undefined,
    private readonly log: Logger,
  ) {}

  private async current(id: string): Promise<MigrationRecord | undefined> {
    return (await readJson<MigrationRecord>(this.store, KEYS.migration(id)))?.value;
  }

  private move(m: MigrationRecord, n: NetworkRecord): MoveRequest {
    return { vmId: m.vm_id, fromSite: n.from_site, toSite: n.to_site, port: n.port, mode: n.mode };
  }

  /** A step refused by the table means another driver moved the part on: nothing to do here. */
  private async step(id: string, event: NetworkEvent, reason?: string): Promise<boolean> {
    try {
      await networkStep(this.store, id, event, reason);
      return true;
    } catch (err) {
      if (err instanceof NetworkTransitionError) return false;
      throw err;
    }
  }

  private async failed(id: string, reason: string): Promise<void> {
    this.log.warn("the VM's address did not move", { migration: id, reason });
    await this.step(id, "fail", reason);
  }

  /**
   * preparing → prepared: the destination site takes the VM's addresses (on its tap, which the
   * waiting QEMU holds now). A failure is the migration's: it rolls back.
   */
  async prepare(id: string): Promise<void> {
    const m = await this.current(id);
    const n = m?.network;
    if (!m || !n || (n.state !== "pending" && n.state !== "preparing")) return;
    if (!this.anchor) throw new Error("the migration moves the VM's address but netreach is not configured");
    if (n.state === "pending") await networkStep(this.store, id, "prepare");
    await this.anchor.prepareNetwork(this.move(m, n));
    await networkStep(this.store, id, "prepared");
  }

  /**
   * The VM runs at the destination: the binding follows it (generation = the migration's fencing
   * token). A failure now is reported in the record, not the migration's: the VM runs there.
   */
  async switchOver(id: string): Promise<void> {
    const m = await this.current(id);
    const n = m?.network;
    if (!m || !n || (n.state !== "prepared" && n.state !== "switching")) return;
    if (n.state === "prepared" && !(await this.step(id, "switch"))) return;
    try {
      if (!this.anchor) throw new Error("netreach is not configured any more");
      const ack = await this.anchor.switchOver(this.move(m, n), n.generation);
      const b = ack.binding;
      // A repeated switch-over (a restart cut the first short) finds its own binding in place.
      const done =
        ack.accepted ||
        (ack.status === BindingStatus.BINDING_STATUS_STALE_GENERATION &&
          b?.site === n.to_site &&
          b.generation === n.generation);
      if (done) await this.step(id, "switched");
      else await this.failed(id, `SwitchOver refused: ${ack.reason}`);
    } catch (err) {
      await this.failed(id, `SwitchOver: ${(err as Error).message}`);
    }
  }

  /**
   * After completion: once the anchor's binding is the migration's at the destination, the old
   * site's forwarding pointer goes. Repeats a switch-over a restart cut short first.
   */
  async settle(id: string): Promise<void> {
    await this.switchOver(id);
    const m = await this.current(id);
    const n = m?.network;
    if (!m || n?.state !== "switched") return;
    try {
      if (!this.anchor) throw new Error("netreach is not configured any more");
      const b = await this.anchor.binding(m.vm_id);
      if (b?.site !== n.to_site || b.generation !== n.generation)
        return await this.failed(
          id,
          `the binding is ${b ? `at ${b.site}, generation ${b.generation}` : "gone"}, not at ${n.to_site} with generation ${n.generation}`,
        );
      await this.anchor.cleanupNetwork(m.vm_id, n.from_site);
      await this.step(id, "settled");
    } catch (err) {
      await this.failed(id, `CleanupNetwork: ${(err as Error).message}`);
    }
  }

  /**
   * The migration failed or was cancelled before its switch-over: what was prepared at the
   * destination (and the anchor's bicast) is undone, the VM keeps its address at the source.
   */
  async rollBack(id: string, why: string): Promise<void> {
    const m = await this.current(id);
    const n = m?.network;
    if (!m || !n) return;
    if (n.state === "pending") {
      await this.step(id, "rollback", why);
      return;
    }
    if (n.state !== "preparing" && n.state !== "prepared") return;
    try {
      if (!this.anchor) throw new Error("netreach is not configured any more");
      await this.anchor.cancelNetwork(m.vm_id, n.to_site);
      await this.step(id, "rollback", why);
    } catch (err) {
      await this.failed(id, `CancelNetwork: ${(err as Error).message}`);
    }
  }
}
