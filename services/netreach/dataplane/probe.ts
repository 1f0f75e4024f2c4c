// What the kernel can do for netreach, found by trying it: each data plane's commands run in a
// throw-away network namespace (`unshare -n`), so a probe never touches the real one. Kernel
// features are per kernel, not per namespace, so the answer holds for every namespace here.
// A missing feature becomes one sentence naming it, at start, never an `ip` error at the first
// binding.
import { spawn } from "node:child_process";
import { DATAPLANES, type DataplaneKind, isDataplaneKind } from "./tunnel.js";

/** Per data plane: null when the kernel does it, else what is missing. */
export type KernelSupport = Record<DataplaneKind, string | null>;

const PROBES: Record<DataplaneKind, string[]> = {
  srv6: [
    "link set dev lo up",
    "route add fc00:ffff::1/128 encap seg6 mode encap.red segs fc00:ffff::2 dev lo",
    "route add fc00:ffff::3/128 encap seg6local action End.DT6 table main dev lo",
    "route add fc00:ffff::4/128 encap seg6local action End.DX4 nh4 0.0.0.0 dev lo",
  ],
  vxlan: [
    "link set dev lo up",
    "link add nrprobe0 type vxlan external gpe dstport 4790",
    "link set dev nrprobe0 up",
    "route add fc00:ffff::1/128 encap ip6 id 1 dst fc00:ffff::2 csum dev nrprobe0",
    "route add 192.0.2.1/32 encap ip6 id 1 dst fc00:ffff::2 csum dev nrprobe0",
  ],
};

/** Turns the first failing probe line and its error into the missing feature's name. */
export function explainProbeFailure(kind: DataplaneKind, line: string, error: string): string {
  if (/Operation not permitted|Permission denied/i.test(error))
    return "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to program the kernel";
  if (/lwt encapsulation type not supported/i.test(error)) {
    if (line.includes("seg6local"))
      return "the kernel has no SRv6 End behaviours (CONFIG_IPV6_SEG6_LWTUNNEL)";
    if (line.includes("seg6"))
      return "the kernel has no SRv6 lightweight tunnels (CONFIG_IPV6_SEG6_LWTUNNEL)";
    return "the kernel has no IP lightweight tunnels (CONFIG_LWTUNNEL, ip_tunnel)";
  }
  if (kind === "vxlan" && line.startsWith("link add") && /Unknown device type|not supported/i.test(error))
    return "the kernel has no VXLAN devices (CONFIG_VXLAN)";
  if (kind === "vxlan" && line.startsWith("link add"))
    return `the kernel refused a VXLAN-GPE device: ${error}`;
  return `'ip ${line}' failed: ${error}`;
}

/** Runs `unshare -n ip -batch -` on the lines; resolves null, or the first failure. */
function tryInScratchNetns(lines: string[]): Promise<{ line: string; error: string } | null> {
  return new Promise((resolve) => {
    const p = spawn("unshare", ["-n", "ip", "-batch", "-"], { stdio: ["pipe", "ignore", "pipe"] });
    let err = "";
    p.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
    p.stdin.on("error", () => undefined);
    p.on("error", (e) =>
      resolve({
        line: "(unshare)",
        error: (e as NodeJS.ErrnoException).code === "ENOENT" ? "unshare not found (util-linux)" : e.message,
      }),
    );
    p.on("close", (code) => {
      if (code === 0) return resolve(null);
      // ip stops at the first failing line and reports "Command failed -:N".
      const n = Number(/Command failed -:(\d+)/.exec(err)?.[1] ?? 0);
      const msg = err
        .split("\n")
        .filter((l) => l.trim() && !/^Command failed/.test(l))
        .join("; ")
        .trim();
      resolve({ line: lines[n - 1] ?? "(unshare)", error: msg || `exit ${code}` });
    });
    p.stdin.end(`${lines.join("\n")}\n`);
  });
}

let cached: Promise<KernelSupport> | undefined;

/** Probes every data plane once per process (the kernel does not change under a running one). */
export function probeKernel(): Promise<KernelSupport> {
  cached ??= (async () => {
    const out = {} as KernelSupport;
    for (const kind of DATAPLANES) {
      const f = await tryInScratchNetns(PROBES[kind]);
      out[kind] = f ? explainProbeFailure(kind, f.line, f.error) : null;
    }
    return out;
  })();
  return cached;
}

export class DataplaneError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DataplaneError";
  }
}

export type DataplaneChoice = DataplaneKind | "auto";

export function isDataplaneChoice(v: string): v is DataplaneChoice {
  return v === "auto" || isDataplaneKind(v);
}

/**
 * The data plane to use: the one asked for if the kernel has it, else a one-line refusal naming
 * what is missing; `auto` prefers SRv6 (one header, no UDP) and falls back to the portable VXLAN.
 */
export function chooseDataplane(want: DataplaneChoice, support: KernelSupport): DataplaneKind {
  if (want !== "auto") {
    const gap = support[want];
    if (gap) throw new DataplaneError(`data plane ${want} is not available here: ${gap}`);
    return want;
  }
  for (const kind of DATAPLANES) if (!support[kind]) return kind;
  throw new DataplaneError(
    `no netreach data plane works here: ${DATAPLANES.map((k) => `${k}: ${support[k]}`).join("; ")}`,
  );
}

/**
 * A `--dataplane` value (auto, srv6, vxlan) resolved on this kernel: the data plane to run, or
 * a DataplaneError in one line (an unknown value, or what the kernel is missing).
 */
export async function resolveDataplane(want: string): Promise<DataplaneKind> {
  if (!isDataplaneChoice(want))
    throw new DataplaneError(`--dataplane must be auto, srv6 or vxlan, got '${want}'`);
  return chooseDataplane(want, await probeKernel());
}
