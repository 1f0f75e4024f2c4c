// Why a QEMU that ended during start-up did not start, in QEMU's own words (its log), as the
// error the caller gets: INVALID_ARGUMENT for a spec QEMU refused (a kernel it cannot open, a
// bad option), RESOURCE_EXHAUSTED for memory this host cannot give. Pure.
import { ServiceError } from "../../common/errors.js";

/** QEMU's lines from its log (its own "qemu-system-x86_64: …" and "qemu: …" messages first). */
export function qemuMessage(log: string): string {
  const lines = log
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
  const own = lines.filter((l) => /^qemu(-system-[\w-]+)?:/.test(l));
  return (own.length ? own : lines).slice(-3).join("; ");
}

export function qemuStartError(
  vmId: string,
  exit: { code: number | null; signal: NodeJS.Signals | null },
  log: string,
): ServiceError {
  const said = qemuMessage(log);
  const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
  const message = `VM ${vmId} did not start: QEMU ${how}${said ? `: ${said}` : " (its log is empty)"}`;
  // A signal is not QEMU judging the spec: someone or something stopped it.
  if (exit.signal) return new ServiceError("unavailable", message);
  if (/cannot set up guest memory|Cannot allocate memory/i.test(said))
    return new ServiceError("exhausted", message);
  return new ServiceError("invalid", message);
}
