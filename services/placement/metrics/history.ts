// Folds CloudSim's host and VM state histories into the README's metrics as entries arrive,
// so nothing is stored per step. An entry covers [its time, the next entry's time); a new
// entry at the same time replaces the previous one, as in CloudSim.

interface Entry {
  time: number;
  allocated: number;
  requested: number;
  flag: boolean;
}

/** Host entries: flag = active. Gives SLATAH's two sums and the number of shutdowns. */
export class HostLog {
  slaTime = 0;
  activeTime = 0;
  shutdowns = 0;
  private last: Entry | undefined;
  /** CloudSim starts every host as "previously active", so a host empty at start counts as one shutdown. */
  private finalisedActive = true;

  add(time: number, allocated: number, requested: number, active: boolean): void {
    const e = this.last;
    if (e && e.time === time) {
      this.last = { time, allocated, requested, flag: active };
      return;
    }
    if (e) {
      this.finalise(e);
      if (e.flag) {
        const dt = time - e.time;
        this.activeTime += dt;
        if (e.allocated < e.requested) this.slaTime += dt;
      }
    }
    this.last = { time, allocated, requested, flag: active };
  }

  private finalise(e: Entry): void {
    if (this.finalisedActive && !e.flag) this.shutdowns++;
    this.finalisedActive = e.flag;
  }

  /** Counts the last entry's shutdown, if any; call once at the end. */
  close(): void {
    if (this.last) this.finalise(this.last);
    this.last = undefined;
  }
}

/** VM entries: flag = migrating (recorded by the source host). Gives PDM's two sums. */
export class VmLog {
  requestedMipsS = 0;
  migrationShortfallMipsS = 0;
  private last: Entry | undefined;

  add(time: number, allocated: number, requested: number, migrating: boolean): void {
    const e = this.last;
    if (e && e.time === time) {
      this.last = { time, allocated, requested, flag: migrating };
      return;
    }
    if (e) {
      const dt = time - e.time;
      this.requestedMipsS += e.requested * dt;
      if (e.allocated < e.requested && e.flag)
        this.migrationShortfallMipsS += (e.requested - e.allocated) * dt;
    }
    this.last = { time, allocated, requested, flag: migrating };
  }
}
