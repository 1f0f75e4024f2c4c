// KVM only with real hardware virtualisation: on machines whose /dev/kvm is a software layer
// (no vmx/svm flag) KVM is ~50× slower than TCG for a stock kernel (FIELD-NOTES).
import { existsSync, readFileSync } from "node:fs";

export type Accel = "tcg" | "kvm";

/** Pure: picks the accelerator from /proc/cpuinfo's text and whether /dev/kvm exists. */
export function chooseAccel(cpuinfo: string, hasDevKvm: boolean): Accel {
  const hw = /^flags\s*:.*\b(vmx|svm)\b/m.test(cpuinfo);
  return hw && hasDevKvm ? "kvm" : "tcg";
}

export function hostAccel(): Accel {
  let cpuinfo = "";
  try {
    cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  } catch {
    // no procfs: stay on TCG
  }
  return chooseAccel(cpuinfo, existsSync("/dev/kvm"));
}
