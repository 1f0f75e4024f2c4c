// Name -> Export, changeable at runtime. The NBD server looks exports up here on every
// handshake, so an export added now is reachable at once, and removing one disconnects
// only its own clients. A name being created is reserved here: a client asking for it waits
// for the create's outcome instead of being told "unknown" (a migration starts the
// destination's QEMU while its disk's proxy export still opens across the WAN).
import type { Backend } from "./backend.js";
import { Export, type ExportOptions } from "./export.js";

export class ExportRegistry {
  private readonly exports = new Map<string, Export>();
  /** Names being created, each with the promise that settles when its create ends. */
  private readonly reserved = new Map<string, { settled: Promise<void>; settle: () => void }>();

  /** Reserves `name` for a create; false if it is reserved already. */
  reserve(name: string): boolean {
    if (this.reserved.has(name)) return false;
    let settle!: () => void;
    const settled = new Promise<void>((r) => {
      settle = r;
    });
    this.reserved.set(name, { settled, settle });
    return true;
  }

  /** The create of `name` ended (served now, or failed): clients waiting for it go on. */
  release(name: string): void {
    const r = this.reserved.get(name);
    this.reserved.delete(name);
    r?.settle();
  }

  isReserved(name: string): boolean {
    return this.reserved.has(name);
  }

  /** While `name` is being created: settles when that create ends. */
  opening(name: string): Promise<void> | undefined {
    return this.reserved.get(name)?.settled;
  }

  /** Adds an export; a duplicate name is an error. */
  add(opts: ExportOptions): Export {
    if (this.exports.has(opts.name)) throw new Error(`export ${JSON.stringify(opts.name)} already exists`);
    const e = new Export(opts);
    this.exports.set(opts.name, e);
    return e;
  }

  get(name: string): Export | undefined {
    return this.exports.get(name);
  }

  /**
   * What a client asking for `name` gets. The empty name (the NBD default export) means the
   * export named "" if there is one, else the first one added.
   */
  resolve(name: string): Export | undefined {
    const e = this.exports.get(name);
    if (e || name !== "") return e;
    return this.exports.values().next().value;
  }

  list(): Export[] {
    return [...this.exports.values()];
  }

  get size(): number {
    return this.exports.size;
  }

  /**
   * Removes an export: new handshakes no longer see it, its clients are disconnected, and
   * once its running requests finish its backend is closed (unless closeBackend is false).
   * Returns the backend; false if there was no such export.
   */
  async remove(name: string, opts: { closeBackend?: boolean } = {}): Promise<Backend | false> {
    const e = this.exports.get(name);
    if (!e) return false;
    this.exports.delete(name);
    await e.shutdown(`export ${name} removed`);
    if (opts.closeBackend ?? true) await e.backend.close();
    return e.backend;
  }

  /** Removes every export (server shutdown). */
  async clear(opts: { closeBackend?: boolean } = {}): Promise<void> {
    await Promise.all([...this.exports.keys()].map((n) => this.remove(n, opts)));
  }
}
