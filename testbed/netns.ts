// Network-namespace test bed helpers: namespaces, veth pairs, addresses, sysctls, tc tbf rate
// limits, and commands run inside a namespace. Every helper forks `ip`/`tc` once; tests that
// program many changes should keep a persistent `ip -batch -` instead (see netreach's IpBatch).
import { type ChildProcess, execFile, type SpawnOptions, spawn } from "node:child_process";
import { promisify } from "node:util";

const execFileP = promisify(execFile);

export class NetnsError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "NetnsError";
  }
}

/** Namespace and interface names: letters, digits, '-', '_', '.'; interfaces at most 15 chars. */
const NAME = /^[A-Za-z0-9_.-]+$/;

function checkName(kind: string, name: string, max = 64): void {
  if (!NAME.test(name) || name.length > max)
    throw new NetnsError(`invalid ${kind} name '${name}' (want [A-Za-z0-9_.-], at most ${max} chars)`);
}

export function checkNetnsName(name: string): void {
  checkName("namespace", name);
}

export function checkIfName(name: string): void {
  checkName("interface", name, 15);
}

/** Runs a command and returns its stdout; the error carries the command and its stderr. */
export async function run(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { encoding: "utf8", maxBuffer: 16 << 20 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new NetnsError(`${cmd} ${args.join(" ")}: ${(e.stderr || e.message).trim()}`, { cause: err });
  }
}

/** `ip -n NS ARGS…` */
export function ip(ns: string, ...args: string[]): Promise<string> {
  return run("ip", ["-n", ns, ...args]);
}

/** Runs a command inside a namespace and returns its stdout. */
export function runIn(ns: string, cmd: string, args: string[] = []): Promise<string> {
  checkNetnsName(ns);
  return run("ip", ["netns", "exec", ns, cmd, ...args]);
}

/** The pids of the processes running in a namespace (none if it does not exist). */
export async function netnsPids(ns: string): Promise<number[]> {
  checkNetnsName(ns);
  const out = await run("ip", ["netns", "pids", ns]).catch(() => "");
  return out
    .split(/\s+/)
    .filter(Boolean)
    .map(Number)
    .filter((p) => Number.isInteger(p) && p > 0);
}

/** Starts a long-running command inside a namespace; the caller owns (and must end) it. */
export function spawnIn(ns: string, cmd: string, args: string[] = [], opts: SpawnOptions = {}): ChildProcess {
  checkNetnsName(ns);
  return spawn("ip", ["netns", "exec", ns, cmd, ...args], { stdio: ["ignore", "pipe", "pipe"], ...opts });
}

/**
 * Sysctls a router namespace needs (FIELD-NOTES, Networking). Set before devices are created so
 * the `default` values are inherited by every new interface. Per-device proxy_delay has no
 * namespace-wide default (neigh/default exists only in the initial namespace): see
 * `deviceRouterSysctls`.
 */
export const routerSysctls: Readonly<Record<string, string>> = {
  "net.ipv4.ip_forward": "1",
  "net.ipv6.conf.all.forwarding": "1",
  "net.ipv6.conf.default.forwarding": "1",
  "net.ipv6.conf.all.proxy_ndp": "1",
  "net.ipv6.conf.default.proxy_ndp": "1",
  "net.ipv6.conf.all.seg6_enabled": "1",
  "net.ipv6.conf.default.seg6_enabled": "1",
  "net.ipv4.conf.all.rp_filter": "0",
  "net.ipv4.conf.default.rp_filter": "0",
  "net.ipv6.conf.all.accept_dad": "0",
  "net.ipv6.conf.default.accept_dad": "0",
  // Lets unprivileged ICMP echo sockets (SOCK_DGRAM) work for any group, for probes.
  "net.ipv4.ping_group_range": "0 2147483647",
};

/** Hosts (correspondents, VM endpoints) only need DAD off and echo sockets. */
export const hostSysctls: Readonly<Record<string, string>> = {
  "net.ipv6.conf.all.accept_dad": "0",
  "net.ipv6.conf.default.accept_dad": "0",
  "net.ipv4.ping_group_range": "0 2147483647",
};

/** Per-device router sysctls: answer proxied ARP/NS at once (default waits up to 0.8 s). */
export function deviceRouterSysctls(dev: string): Record<string, string> {
  checkIfName(dev);
  return {
    [`net.ipv4.neigh.${dev}.proxy_delay`]: "0",
    [`net.ipv6.neigh.${dev}.proxy_delay`]: "0",
    [`net.ipv4.conf.${dev}.rp_filter`]: "0",
  };
}

export async function setSysctls(ns: string, values: Readonly<Record<string, string>>): Promise<void> {
  const args = Object.entries(values).map(([k, v]) => `${k}=${v}`);
  if (args.length) await runIn(ns, "sysctl", ["-q", "-w", ...args]);
}

export async function listNetns(prefix = ""): Promise<string[]> {
  const out = await run("ip", ["netns", "list"]);
  return out
    .split("\n")
    .map((l) => l.split(" ")[0])
    .filter((n) => n !== "" && n.startsWith(prefix));
}

export interface CreateNetnsOptions {
  sysctls?: Readonly<Record<string, string>>;
}

/** Creates a namespace with loopback up and the given sysctls. Fails if it exists. */
export async function createNetns(name: string, opts: CreateNetnsOptions = {}): Promise<void> {
  checkNetnsName(name);
  await run("ip", ["netns", "add", name]);
  try {
    await ip(name, "link", "set", "lo", "up");
    if (opts.sysctls) await setSysctls(name, opts.sysctls);
  } catch (err) {
    await destroyNetns(name);
    throw err;
  }
}

/** Deletes a namespace (its devices go with it); absent is fine. */
export async function destroyNetns(name: string): Promise<void> {
  checkNetnsName(name);
  try {
    await run("ip", ["netns", "del", name]);
  } catch (err) {
    if (!/No such file|not exist/i.test((err as Error).message)) throw err;
  }
}

/** Deletes every namespace whose name starts with prefix (a test's cleanup, also after a crash). */
export async function destroyNetnsWithPrefix(prefix: string): Promise<void> {
  if (prefix.length < 3) throw new NetnsError(`prefix '${prefix}' is too broad`);
  for (const n of await listNetns(prefix)) await destroyNetns(n);
}

/**
 * A namespace-name prefix unique to this run: `${base}${pid}-${random}-`, so that two runs of the
 * same test or benchmark never share a namespace. The pid lets `destroyStaleNetns` tell a crashed
 * run's leftovers from a live run's namespaces. Still starts with `base`, so `.ci/run`'s cleanup
 * (and `destroyNetnsWithPrefix(base)`) matches it.
 */
export function uniqueNetnsPrefix(base: string): string {
  if (!/^[a-z0-9-]{3,12}$/.test(base)) throw new NetnsError(`invalid namespace prefix base '${base}'`);
  return `${base}${process.pid}-${Math.random().toString(36).slice(2, 6)}-`;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Deletes namespaces named `${base}${pid}-…` (uniqueNetnsPrefix) whose process is gone: a
 * crashed run's leftovers, with whatever still runs inside them (a QEMU, a service). Namespaces
 * of runs still going are left alone.
 */
export async function destroyStaleNetns(base: string): Promise<void> {
  if (base.length < 3) throw new NetnsError(`prefix '${base}' is too broad`);
  for (const n of await listNetns(base)) {
    const pid = /^(\d+)-/.exec(n.slice(base.length))?.[1];
    if (pid === undefined || processAlive(Number(pid))) continue;
    await killNetnsProcesses(n);
    await destroyNetns(n);
  }
}

/** SIGKILLs every process in a namespace (none if it does not exist). */
export async function killNetnsProcesses(ns: string): Promise<void> {
  for (const pid of await netnsPids(ns)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone already
    }
  }
}

export interface VethEnd {
  ns: string;
  name: string;
  /** MAC address (aa:bb:cc:dd:ee:ff); random if absent. */
  mac?: string;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;

export function checkMac(mac: string): void {
  if (!MAC.test(mac)) throw new NetnsError(`invalid MAC address '${mac}'`);
}

/** Creates a veth pair between two namespaces and brings both ends up. */
export async function createVeth(a: VethEnd, b: VethEnd): Promise<void> {
  for (const e of [a, b]) {
    checkNetnsName(e.ns);
    checkIfName(e.name);
    if (e.mac) checkMac(e.mac);
  }
  const mac = (e: VethEnd) => (e.mac ? ["address", e.mac] : []);
  await ip(
    a.ns,
    "link",
    "add",
    a.name,
    ...mac(a),
    "type",
    "veth",
    "peer",
    "name",
    b.name,
    ...mac(b),
    "netns",
    b.ns,
  );
  await ip(a.ns, "link", "set", a.name, "up");
  await ip(b.ns, "link", "set", b.name, "up");
}

export interface AddressOptions {
  /** IPv6: usable at once, without duplicate address detection (bound right after it is added). */
  noDad?: boolean;
  /** IPv6: no on-link prefix route (everything goes through the default router). */
  noPrefixRoute?: boolean;
}

/** Adds an address in CIDR notation (IPv4 or IPv6) to a device. */
export async function addAddress(
  ns: string,
  dev: string,
  cidr: string,
  opts: AddressOptions = {},
): Promise<void> {
  if (!/^[0-9a-fA-F:.]+\/\d{1,3}$/.test(cidr))
    throw new NetnsError(`invalid address '${cidr}' (want ADDR/LEN)`);
  const flags = [...(opts.noPrefixRoute ? ["noprefixroute"] : []), ...(opts.noDad ? ["nodad"] : [])];
  await ip(ns, "addr", "add", cidr, "dev", dev, ...flags);
}

export interface TbfOptions {
  rateBitsPerSecond: number;
  /** Bucket size; defaults to 10 ms worth of the rate (at least 16 KiB). */
  burstBytes?: number;
  /** Longest a packet may wait in the queue; default 50 ms. */
  latencyMs?: number;
}

/** Caps a device's egress rate with tc tbf (netem is absent on these kernels). */
export async function setRateLimit(ns: string, dev: string, opts: TbfOptions): Promise<void> {
  if (!(opts.rateBitsPerSecond > 0)) throw new NetnsError(`rate must be > 0, got ${opts.rateBitsPerSecond}`);
  const burst = opts.burstBytes ?? Math.max(16384, Math.ceil(opts.rateBitsPerSecond / 8 / 100));
  checkNetnsName(ns);
  await run("tc", [
    "-n",
    ns,
    "qdisc",
    "replace",
    "dev",
    dev,
    "root",
    "tbf",
    "rate",
    `${Math.round(opts.rateBitsPerSecond)}bit`,
    "burst",
    String(burst),
    "latency",
    `${opts.latencyMs ?? 50}ms`,
  ]);
}

/** Reads a device's MAC address. */
export async function macOf(ns: string, dev: string): Promise<string> {
  const out = JSON.parse(await ip(ns, "-j", "link", "show", "dev", dev)) as Array<{ address: string }>;
  return out[0].address;
}
