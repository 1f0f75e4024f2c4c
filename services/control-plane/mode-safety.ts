// Which migration modes are safe between two hosts (pure). Where pre-copy corrupts guests
// (common/precopy-hazard.ts: QEMU < 8.0 under TCG) `auto` becomes post-copy and an explicit
// pre-copy or hybrid (which starts with pre-copy rounds) is refused with the reason.
import { MigrationMode } from "../../gen/vmhop/v1/page.js";
import { type HostQemu, precopyHazard } from "../common/precopy-hazard.js";

export type { HostQemu };
export { precopyHazard };

export type ModeDecision = { mode: MigrationMode; note?: string } | { refused: string; mode?: undefined };

/**
 * The mode a migration between `hosts` runs in: unspecified is post-copy; `auto` stays `auto`
 * (the source page-server picks by the dirty rate) unless pre-copy is unsafe on a host, then
 * post-copy (with a note why); pre-copy and hybrid there are refused (unless `allowUnsafe`).
 */
export function decideMode(requested: MigrationMode, hosts: HostQemu[], allowUnsafe = false): ModeDecision {
  if (
    requested === MigrationMode.MIGRATION_MODE_UNSPECIFIED ||
    requested === MigrationMode.MIGRATION_MODE_POSTCOPY
  )
    return { mode: MigrationMode.MIGRATION_MODE_POSTCOPY };
  const precopying = [
    MigrationMode.MIGRATION_MODE_PRECOPY,
    MigrationMode.MIGRATION_MODE_HYBRID,
    MigrationMode.MIGRATION_MODE_AUTO,
  ];
  if (!precopying.includes(requested)) return { mode: requested }; // unknown values: the caller's to refuse
  const hazards = hosts.map(precopyHazard).filter((x): x is string => x !== undefined);
  if (hazards.length === 0) return { mode: requested };
  if (requested === MigrationMode.MIGRATION_MODE_AUTO)
    return {
      mode: MigrationMode.MIGRATION_MODE_POSTCOPY,
      note: `auto chose post-copy: ${hazards.join("; ")}`,
    };
  if (allowUnsafe) return { mode: requested, note: `allowed although ${hazards.join("; ")}` };
  const name =
    requested === MigrationMode.MIGRATION_MODE_HYBRID ? "hybrid (pre-copy rounds first)" : "pre-copy";
  return {
    refused: `${name} would corrupt the guest: ${hazards.join("; ")}; use post-copy (or auto)`,
  };
}
