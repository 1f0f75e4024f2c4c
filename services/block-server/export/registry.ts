// Name -> Export, changeable at runtime. The NBD server looks exports up here on every
// handshake, so an export added now is reachable at once, and removing one disconnects
// only its own clients.
import type { Backend } from "./backend.js";
import { Export, type ExportOptions } from "./export.js";

export class ExportRegistry {
  private readonly exports = new Map<string, Export>();

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
