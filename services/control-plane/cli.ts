// `vmhop control …`: serve the control-plane, or talk to a running one.

import {
  HostLiveness,
  type HostLivenessReport,
  type ListHostsResponse,
  StorageMode,
} from "../../gen/vmhop/v1/control.js";
import { HandoverMode } from "../../gen/vmhop/v1/netreach.js";
import { MigrationMode, VmState } from "../../gen/vmhop/v1/page.js";
import { CliError } from "../cli/errors.js";
import { type Config, ConfigError, helpText, type OptionSpecs, parseConfig } from "../common/config.js";
import { parsePowerParams } from "../power/config.js";
import { ControlClient, DEFAULT_CONTROL_GRPC } from "./client.js";
import { type DiskSample, diskSample, formatProgress } from "./progress.js";
import { serve, serveSpecs } from "./serve.js";
import { createVmRequest, VmArgsError } from "./vm-args.js";

const USAGE = `usage: vmhop control <command>

commands:
  serve [--grpc 127.0.0.1:7405] [--store redis://HOST:PORT]
           the gRPC ControlPlaneService (vmhop control serve --help for every option)
  hosts                                  list registered hosts, their liveness and the leading replica
  status                                 which control-plane replica leads (drives migrations)
  register-host HOST_ID PAGE_ADDR [--site S] [--block-server ADDR --block-nbd ADDR]
          [--power-driver ipmi|redfish|wol|command|testbed --power-params K=V,…|JSON]
           add or update a host (its page-server's gRPC address, which must answer and not be another
           host's; its block-server's gRPC and NBD ones; how it is switched on and off)
  deregister-host HOST_ID                forget a host (refused while VMs are on it or migrating to or from it)
  power HOST_ID on|off|status           switch a host on or off through its power driver (off is
           refused while VMs are on it or migrating; on waits until it is up), or ask its state
  vms [--host HOST_ID]                   list VMs with their host and live state
  create-vm VM_ID HOST_ID --kernel PATH [--memory-mib 256] [--vcpus 1] [--initrd PATH] [--cmdline S]
          [--tap TAP --mac MAC [--home-ipv6 A,… --home-ipv4 A,…]]
          [--disk-url nbd://… | --disk-image PATH | --disk-size 256M]
           define and start a VM on a host; --disk-image (an image on the host, served in place) or
           --disk-size (a new empty image) make the host's block-server export it first
  delete-vm VM_ID                        stop and remove a VM (and the disk export create-vm made)
  migrate VM_ID DEST_HOST_ID [--mode postcopy|precopy|hybrid|auto] [--storage auto|lazy|shared]
          [--handover auto|bbm|mbb|mbb-fp|mbb-bicast]
          [--request-id ID] [--no-wait]
           migrate a VM (and its disk: lazy by default when it is on the source's block-server);
           precopy and hybrid are refused where they corrupt guests (QEMU < 8.0 under TCG; auto
           is post-copy there);
           shows progress until the migration is final unless --no-wait (with --json: the final
           record as one JSON object; exit 1 when it failed or was cancelled)
  migrations [VM_ID]                     list migrations, newest first
  cancel MIGRATION_ID                    cancel a migration before its switch-over

every command but serve takes --server HOST:PORT (default ${DEFAULT_CONTROL_GRPC}) and --json`;

const clientSpecs = {
  server: {
    type: "string",
    default: DEFAULT_CONTROL_GRPC,
    describe: "control-plane gRPC address",
    env: "VMHOP_CONTROL",
  },
  json: { type: "boolean", default: false, describe: "print JSON" },
  site: { type: "string", default: "", describe: "register-host: the host's site" },
  host: { type: "string", default: "", describe: "vms: only this host's VMs" },
  "block-server": {
    type: "string",
    default: "",
    describe: "register-host: the host's block-server gRPC address",
  },
  "block-nbd": {
    type: "string",
    default: "",
    describe: "register-host: the host's block-server NBD address",
  },
  "power-driver": {
    type: "string",
    default: "",
    describe: "register-host: the host's power driver: ipmi | redfish | wol | command | testbed",
  },
  "power-params": {
    type: "string",
    default: "",
    describe:
      "register-host: the driver's parameters, key=value,… or a JSON object (ipmi: address, username; redfish: url, username; wol: mac, off_command; command: on, off, status; testbed: socket). Passwords: the control-plane's VMHOP_<DRIVER>_PASSWORD or --power-credentials",
  },
  mode: { type: "string", default: "postcopy", describe: "migrate: postcopy | precopy | hybrid | auto" },
  storage: {
    type: "string",
    default: "auto",
    describe: "migrate: auto (lazy for a disk on the source's block-server, else shared) | lazy | shared",
  },
  handover: {
    type: "string",
    default: "auto",
    describe:
      "migrate: how netreach moves the VM's address: auto (the anchor's default) | bbm | mbb | mbb-fp | mbb-bicast",
  },
  "request-id": { type: "string", default: "", describe: "migrate: idempotency key" },
  "no-wait": { type: "boolean", default: false, describe: "migrate: return once the migration is recorded" },
  kernel: { type: "string", default: "", describe: "create-vm: the guest kernel (a path on the host)" },
  initrd: { type: "string", default: "", describe: "create-vm: the guest initrd (a path on the host)" },
  cmdline: { type: "string", default: "", describe: "create-vm: the kernel command line" },
  "memory-mib": { type: "number", default: 256, describe: "create-vm: guest memory in MiB" },
  vcpus: { type: "number", default: 1, describe: "create-vm: virtual CPUs" },
  tap: { type: "string", default: "", describe: "create-vm: the host tap device of the guest's NIC" },
  mac: { type: "string", default: "", describe: "create-vm: the guest NIC's MAC address" },
  "disk-url": {
    type: "string",
    default: "",
    describe: "create-vm: an existing disk export, nbd://HOST:PORT/NAME",
  },
  "disk-image": {
    type: "string",
    default: "",
    describe: "create-vm: an image on the host, exported by its block-server (served in place)",
  },
  "home-ipv6": {
    type: "string",
    default: "",
    describe:
      "create-vm: the VM's home IPv6 addresses, comma-separated (netreach keeps them reachable; needs --tap and --mac)",
  },
  "home-ipv4": {
    type: "string",
    default: "",
    describe: "create-vm: the VM's home IPv4 addresses, comma-separated",
  },
  "disk-size": {
    type: "string",
    default: "",
    describe: "create-vm: a new empty disk of this size (e.g. 256M, 2G) on the host's block-server",
  },
  help: { type: "boolean", short: "h", describe: "show this help" },
} satisfies OptionSpecs;

const HANDOVER: Record<string, HandoverMode> = {
  auto: HandoverMode.HANDOVER_MODE_UNSPECIFIED,
  bbm: HandoverMode.HANDOVER_MODE_BBM,
  mbb: HandoverMode.HANDOVER_MODE_MBB,
  "mbb-fp": HandoverMode.HANDOVER_MODE_MBB_FP,
  "mbb-bicast": HandoverMode.HANDOVER_MODE_MBB_BICAST,
};

const STORAGE: Record<string, StorageMode> = {
  auto: StorageMode.STORAGE_MODE_UNSPECIFIED,
  lazy: StorageMode.STORAGE_MODE_LAZY,
  shared: StorageMode.STORAGE_MODE_SHARED,
};

const MODES: Record<string, MigrationMode> = {
  postcopy: MigrationMode.MIGRATION_MODE_POSTCOPY,
  precopy: MigrationMode.MIGRATION_MODE_PRECOPY,
  hybrid: MigrationMode.MIGRATION_MODE_HYBRID,
  auto: MigrationMode.MIGRATION_MODE_AUTO,
};

function table(rows: string[][]): string {
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows
    .map((r) =>
      r
        .map((v, i) => v.padEnd(w[i]))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

function args(n: number, got: string[], usage: string): string[] {
  if (got.length !== n) throw new CliError(`usage: vmhop control ${usage}`);
  return got;
}

export async function run(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help") {
    console.log(USAGE);
    return cmd ? 0 : 2;
  }
  try {
    if (cmd === "serve") return await serve(parseConfig(serveSpecs, rest));
    const o = parseConfig(clientSpecs, rest);
    if (o.help) {
      console.log(helpText(USAGE, clientSpecs));
      return 0;
    }
    const c = new ControlClient(o.server!);
    try {
      return await verb(c, cmd, o._, o);
    } catch (err) {
      if (err instanceof CliError) throw err;
      const e = err as { details?: string; message: string };
      throw new CliError(`control-plane ${o.server}: ${e.details || e.message}`, 1);
    } finally {
      c.close();
    }
  } catch (err) {
    if (err instanceof ConfigError) throw new CliError(`${err.message}\n\n${USAGE}`);
    throw err;
  }
}

async function verb(
  c: ControlClient,
  cmd: string,
  pos: string[],
  o: Config<typeof clientSpecs>,
): Promise<number> {
  const out = (json: unknown, text: () => string) => console.log(o.json ? JSON.stringify(json) : text());
  switch (cmd) {
    case "hosts": {
      const st = await c.hostsStatus();
      const live = new Map(st.liveness.map((l) => [l.hostId, l]));
      const hosts = st.hosts.map((h) => ({ ...h, liveness: live.get(h.hostId) }));
      out(hosts, () =>
        [
          leaderLine(st),
          table([
            ["HOST", "SITE", "PAGE-SERVER", "ASLEEP", "POWER", "DRIVER", "POWER-ERROR", "LIVENESS"],
            ...hosts.map((h) => [
              h.hostId,
              h.site,
              h.pageServerAddress,
              String(h.asleep),
              h.powerState || "-",
              h.power?.driver || "-",
              h.powerError,
              livenessText(h.liveness),
            ]),
          ]),
        ].join("\n"),
      );
      return 0;
    }
    case "status": {
      const st = await c.hostsStatus();
      out({ leaderReplica: st.leaderReplica, leaderGeneration: st.leaderGeneration }, () => leaderLine(st));
      return 0;
    }
    case "register-host": {
      const [hostId, page] = args(2, pos, "register-host HOST_ID PAGE_ADDR [--site S]");
      const driver = o["power-driver"] ?? "";
      let params: Record<string, string>;
      try {
        params = parsePowerParams(o["power-params"] ?? "");
      } catch (err) {
        throw new CliError((err as Error).message);
      }
      if (!driver && Object.keys(params).length) throw new CliError("--power-params needs --power-driver");
      const h = await c.registerHost({
        hostId,
        site: o.site ?? "",
        pageServerAddress: page,
        blockServerAddress: o["block-server"] ?? "",
        blockNbdAddress: o["block-nbd"] ?? "",
        power: driver ? { driver, params } : undefined,
      });
      out(
        h,
        () =>
          `registered ${h.hostId} (page-server ${h.pageServerAddress}${h.power ? `, power ${h.power.driver}` : ""})`,
      );
      return 0;
    }
    case "power": {
      const [hostId, action] = args(2, pos, "power HOST_ID on|off|status");
      if (!["on", "off", "status"].includes(action))
        throw new CliError("usage: vmhop control power HOST_ID on|off|status");
      const r = await c.powerHost(hostId, action);
      out(r, () =>
        action === "status"
          ? `${hostId}: ${r.state} (recorded ${r.host.powerState || (r.host.asleep ? "asleep" : "awake")}${r.host.power ? "" : "; no power driver"})`
          : `${hostId}: ${r.state}${r.host.power ? "" : " (recorded only: no power driver)"}`,
      );
      return 0;
    }
    case "deregister-host": {
      const [hostId] = args(1, pos, "deregister-host HOST_ID");
      await c.deregisterHost(hostId);
      out({ hostId }, () => `deregistered ${hostId}`);
      return 0;
    }
    case "vms": {
      const vms = await c.listVms(o.host);
      out(vms, () =>
        table([
          ["VM", "HOST", "STATE", "MIGRATION", "FENCE"],
          ...vms.map((v) => [
            v.vm?.spec?.vmId ?? "",
            v.hostId,
            VmState[v.vm?.state ?? 0].replace("VM_STATE_", "").toLowerCase(),
            v.migrationId,
            String(v.fencingToken),
          ]),
        ]),
      );
      return 0;
    }
    case "create-vm": {
      const [vmId, hostId] = args(2, pos, "create-vm VM_ID HOST_ID --kernel PATH [options]");
      let req: ReturnType<typeof createVmRequest>;
      try {
        req = createVmRequest({
          vmId,
          memoryMib: o["memory-mib"] ?? 256,
          vcpus: o.vcpus ?? 1,
          kernel: o.kernel ?? "",
          initrd: o.initrd ?? "",
          cmdline: o.cmdline ?? "",
          tap: o.tap ?? "",
          mac: o.mac ?? "",
          diskUrl: o["disk-url"] ?? "",
          diskImage: o["disk-image"] ?? "",
          diskSize: o["disk-size"] ?? "",
          homeIpv6: o["home-ipv6"] ?? "",
          homeIpv4: o["home-ipv4"] ?? "",
        });
      } catch (err) {
        if (err instanceof VmArgsError) throw new CliError(err.message);
        throw err;
      }
      const vm = await c.createVm(req.spec, hostId, req.network, req.disk);
      const state = VmState[vm.state].replace("VM_STATE_", "").toLowerCase();
      out(
        { hostId, vm },
        () =>
          `created ${vmId} on ${hostId}: ${state}${vm.spec?.diskNbdUrl ? `, disk ${vm.spec.diskNbdUrl}` : ""}`,
      );
      return 0;
    }
    case "delete-vm": {
      const [vmId] = args(1, pos, "delete-vm VM_ID");
      await c.deleteVm(vmId);
      out({ vmId, deleted: true }, () => `deleted ${vmId}`);
      return 0;
    }
    case "migrate": {
      const [vmId, dest] = args(
        2,
        pos,
        "migrate VM_ID DEST_HOST_ID [--mode M] [--request-id ID] [--no-wait]",
      );
      const mode = MODES[o.mode ?? "postcopy"];
      if (mode === undefined) throw new CliError(`--mode must be one of ${Object.keys(MODES).join(", ")}`);
      const storage = STORAGE[o.storage ?? "auto"];
      if (storage === undefined)
        throw new CliError(`--storage must be one of ${Object.keys(STORAGE).join(", ")}`);
      const handoverMode = HANDOVER[o.handover ?? "auto"];
      if (handoverMode === undefined)
        throw new CliError(`--handover must be one of ${Object.keys(HANDOVER).join(", ")}`);
      let m = await c.migrateVm({
        vmId,
        destinationHostId: dest,
        mode,
        storage,
        handoverMode,
        requestId: o["request-id"] ?? "",
      });
      if (!o["no-wait"]) {
        // On a terminal one line redrawn in place; otherwise a line per update (logs, pipes).
        const tty = process.stderr.isTTY && !o.json;
        let since: DiskSample | undefined; // the disk copy's first sample: its rate gives the ETA
        m = await c.waitForMigration(m.migrationId, (u) => {
          since ??= diskSample(u);
          if (o.json) return;
          const line = formatProgress(u, Date.now(), since);
          // Cut to the terminal's width: a wrapped line would not be redrawn in place.
          if (tty) process.stderr.write(`\r\x1b[K${line.slice(0, (process.stderr.columns || 200) - 1)}`);
          else console.error(line);
        });
        if (tty) process.stderr.write("\n");
      }
      out(
        m,
        () =>
          `${m.migrationId} ${m.vmId} ${m.sourceHostId} → ${m.destinationHostId}: ${m.state}${m.error ? ` (${m.error})` : ""}`,
      );
      return m.state === "failed" || m.state === "cancelled" ? 1 : 0;
    }
    case "migrations": {
      const ms = await c.listMigrations(pos[0] ?? "");
      out(ms, () =>
        table([
          ["MIGRATION", "VM", "FROM", "TO", "STATE", "ERROR"],
          // What a host that went down took with it belongs beside the errors: never hidden.
          ...ms.map((m) => [
            m.migrationId,
            m.vmId,
            m.sourceHostId,
            m.destinationHostId,
            m.state,
            [m.error, m.lost && `lost: ${m.lost}`].filter(Boolean).join("; "),
          ]),
        ]),
      );
      return 0;
    }
    case "cancel": {
      const [id] = args(1, pos, "cancel MIGRATION_ID");
      const m = await c.cancelMigration(id);
      out(m, () => `${m.migrationId}: ${m.state}`);
      return 0;
    }
    default:
      throw new CliError(`unknown control command '${cmd}'\n\n${USAGE}`);
  }
}

/** "leader: REPLICA (generation G)", or that none leads now. */
function leaderLine(st: ListHostsResponse): string {
  return st.leaderReplica
    ? `leader: ${st.leaderReplica} (generation ${st.leaderGeneration})`
    : "leader: none (no replica holds the lease now, or one process without a store lease)";
}

/** up / suspect (missed N) / down: the reason; "-" before the leader checked. */
function livenessText(l: HostLivenessReport | undefined): string {
  if (!l || l.state === HostLiveness.HOST_LIVENESS_UNSPECIFIED) return "-";
  const state = HostLiveness[l.state].replace("HOST_LIVENESS_", "").toLowerCase();
  return l.detail ? `${state} (missed ${l.missed}: ${l.detail})` : state;
}
