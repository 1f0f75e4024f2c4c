// What a restarted page-server needs to pick a migration up again: `migration.json` beside the
// VM's spec.json, replaced atomically, read back with a clear error when it is not usable.
import { existsSync, readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { writeFileAtomic } from "../../common/atomic-file.js";
import type { Compression } from "../channel/compress-policy.js";
import type { ChannelPath } from "../channel/path-policy.js";
import type { Vm } from "../vm/vm.js";
import type { MigrationMode } from "./driver.js";

export interface SavedMigration {
  id: string;
  role: "source" | "destination";
  channelAddress?: string;
  mode?: MigrationMode;
  hybridRounds?: number;
  hybridSeconds?: number;
  maxBandwidth?: number;
  compression?: Compression;
  preempt?: boolean;
  /** Source: the path chosen. */
  channelPath?: ChannelPath;
  /** Destination: QEMU was told where to take the stream (migrate-incoming ran). */
  listening?: boolean;
  /** Set once it ended. */
  phase?: "completed" | "failed";
  /** Source: ending the source QEMU after a completed migration failed (it stays completed). */
  cleanupError?: string;
}

export const migrationFile = (vm: Vm): string => join(dirname(vm.paths.specFile), "migration.json");

export function saveMigration(vm: Vm, m: SavedMigration): void {
  writeFileAtomic(migrationFile(vm), JSON.stringify(m));
}

/** undefined when the VM has no migration; throws naming the file when it cannot be used. */
export function loadMigration(vm: Vm): SavedMigration | undefined {
  const f = migrationFile(vm);
  if (!existsSync(f)) return undefined;
  let m: Partial<SavedMigration>;
  try {
    m = JSON.parse(readFileSync(f, "utf8"));
  } catch (err) {
    throw new Error(`${f} is not valid JSON (${(err as Error).message})`);
  }
  if (typeof m?.id !== "string" || (m.role !== "source" && m.role !== "destination"))
    throw new Error(`${f} names no migration id and role`);
  return m as SavedMigration;
}

/** After a set-up that failed: nothing for a restart to pick up. */
export function removeMigration(vm: Vm): void {
  rmSync(migrationFile(vm), { force: true });
}
