// Fencing tokens: per VM, the highest token a migration's calls carried. A call with an older
// one comes from a driver that was superseded (a control-plane that lost the VM to a newer
// migration) and is refused. Kept in <run-dir>/<vm>/fence.json beside the VM's saved state,
// so a restarted page-server still refuses it.
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic } from "../common/atomic-file.js";
import { HostError } from "./errors.js";

export class Fences {
  private readonly seen = new Map<string, number>();

  constructor(private readonly runRoot: string) {}

  /**
   * Throws (precondition) when `token` is older than one seen for the VM; remembers a newer one
   * before the call acts. Token 0 is an unfenced caller (CLI, direct use): accepted, not kept.
   */
  check(vmId: string, token = 0): void {
    if (!token) return;
    const seen = this.highest(vmId);
    if (token < seen)
      throw new HostError("precondition", `stale fencing token ${token} for VM ${vmId} (seen ${seen})`);
    if (token === seen) return;
    mkdirSync(join(this.runRoot, vmId), { recursive: true });
    writeFileAtomic(this.file(vmId), JSON.stringify({ token }));
    this.seen.set(vmId, token);
  }

  /** The highest token seen for the VM (0: none). */
  highest(vmId: string): number {
    const known = this.seen.get(vmId);
    if (known !== undefined) return known;
    const f = this.file(vmId);
    const token = existsSync(f) ? parseToken(readFileSync(f, "utf8")) : 0;
    if (token === undefined)
      throw new HostError("unavailable", `${f} holds no fencing token: fix or remove it`);
    this.seen.set(vmId, token);
    return token;
  }

  private file(vmId: string): string {
    return join(this.runRoot, vmId, "fence.json");
  }
}

function parseToken(text: string): number | undefined {
  try {
    const t = (JSON.parse(text) as { token?: unknown } | null)?.token;
    return Number.isSafeInteger(t) && (t as number) >= 0 ? (t as number) : undefined;
  } catch {
    return undefined;
  }
}
