// `vmhop block …`: run a block-server, or drive a running one over gRPC.
//   serve     start NBD (+ gRPC control), optionally with one export, like xnbd-server
//   list, status, create, remove, cache-all, stop-copy, rate, set-upstream, promote, watch
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import {
  BlockServiceClient,
  type CreateExportResponse,
  type ExportStatus,
  type GetExportStatusResponse,
  type ListExportsResponse,
  ProgressKind,
  type PromoteResponse,
  type RemoveExportResponse,
  type SetRateLimitResponse,
  type SetUpstreamResponse,
  type StartBackgroundCopyResponse,
  type StopBackgroundCopyResponse,
  type WatchProgressResponse,
} from "../../gen/vmhop/v1/block.js";
import { CliError } from "../cli/errors.js";
import { serveUntilSignal } from "../cli/serve-until-signal.js";
import { type Config, ConfigError, helpText, type OptionSpecs, parseConfig } from "../common/config.js";
import { startGrpcServer } from "../common/grpc/server.js";
import type { Closer } from "../common/lifecycle.js";
import { parseListenAddress } from "../common/listen-address.js";
import { createLogger, type Logger } from "../common/log.js";
import { DEFAULT_METRICS, metricsOption, serveMetrics } from "../common/metrics/flag.js";
import { openStore } from "../common/store/index.js";
import { BlockServer, type CreateExportSpec } from "./block-server.js";
import {
  defaultStateDir,
  defaultStateKey,
  type ExportTable,
  FileExportTable,
  StoreExportTable,
} from "./export-table.js";
import { blockService, upstreamHotSource } from "./grpc/block-service.js";
import { bindBlockServerMetrics } from "./metrics.js";
import { DEFAULT_MAX_CONNECTIONS } from "./nbd/server/index.js";

export const DEFAULT_NBD_LISTEN = "127.0.0.1:10809";
export const DEFAULT_GRPC = "127.0.0.1:10810";

const serveSpecs = {
  target: { type: "string", describe: "serve this raw image file (target mode)" },
  proxy: {
    type: "string",
    describe: "lazy-relocation proxy of this upstream: nbd://HOST:PORT/NAME or nbd+unix:///NAME?socket=PATH",
  },
  cache: { type: "string", describe: "proxy mode: local cache file (its bitmap is CACHE.bitmap)" },
  name: { type: "string", default: "disk0", describe: "export name" },
  description: { type: "string", describe: "export description shown to clients" },
  "read-only": { type: "boolean", default: false, describe: "refuse writes" },
  "block-size": { type: "number", describe: "proxy bitmap granularity in bytes (default 65536)" },
  copy: { type: "boolean", default: false, describe: "proxy: start the background copy at once" },
  "rate-mib": {
    type: "number",
    default: 0,
    describe: "proxy: background copy rate limit in MiB/s (0 = none)",
  },
  "auto-promote": {
    type: "boolean",
    default: false,
    describe: "proxy: switch to target mode when every block is local",
  },
  "upstream-control": {
    type: "string",
    describe: "proxy: gRPC address of the upstream block-server (hot blocks)",
  },
  listen: {
    type: "list",
    default: [DEFAULT_NBD_LISTEN],
    describe: "NBD listen address HOST:PORT or unix:PATH (repeatable)",
  },
  grpc: {
    type: "string",
    describe: `gRPC control address, or 'none' (default ${DEFAULT_GRPC}, another free port if taken)`,
  },
  "state-dir": {
    type: "string",
    describe:
      "where exports created over gRPC are recorded so a restart serves them again (DIR/exports.json, " +
      "DIR locked while serving), or 'none' (default: /var/lib/vmhop/block-server/LISTEN as root, else " +
      "$XDG_STATE_HOME/vmhop/block-server/LISTEN, LISTEN the first --listen; none when its port is 0)",
  },
  store: {
    type: "string",
    describe: "redis://HOST:PORT: record the exports in the shared Store instead of --state-dir",
  },
  "cache-dir": {
    type: "string",
    describe:
      "where proxy exports created without a cache path keep it (DIR/NAME.cache; default: STATE_DIR/cache when exports are recorded in a state dir)",
  },
  "state-key": {
    type: "string",
    describe:
      "with --store: this block-server's key there (default HOSTNAME/LISTEN, LISTEN the first --listen)",
  },
  "max-connections": {
    type: "number",
    default: DEFAULT_MAX_CONNECTIONS,
    describe: "NBD clients served at once; more are refused (with a log line)",
  },
  metrics: metricsOption(DEFAULT_METRICS["block-server"]),
  help: { type: "boolean", short: "h", describe: "show this help" },
} satisfies OptionSpecs;

const clientSpecs = {
  server: {
    type: "string",
    default: DEFAULT_GRPC,
    describe: "gRPC address of the block-server",
    env: "VMHOP_BLOCK_SERVER",
  },
  json: { type: "boolean", default: false, describe: "print JSON" },
  wait: { type: "boolean", default: false, describe: "cache-all/promote: wait until done, showing progress" },
  "rate-mib": { type: "number", describe: "rate limit in MiB/s (0 = none)" },
  target: { type: "string", describe: "create: raw image to serve" },
  proxy: { type: "string", describe: "create: upstream NBD URL" },
  cache: { type: "string", describe: "create: proxy cache file" },
  "read-only": { type: "boolean", default: false, describe: "create: refuse writes" },
  copy: { type: "boolean", default: false, describe: "create: start the background copy at once" },
  help: { type: "boolean", short: "h", describe: "show this help" },
} satisfies OptionSpecs;

const USAGE = `usage: vmhop block <command> [options]

commands:
  serve --target IMAGE [--name disk0] [--listen 127.0.0.1:10809|unix:PATH]
  serve --proxy nbd://HOST:PORT/NAME --cache FILE [--copy] [--listen …]
  list                        exports and NBD listeners
  status [NAME]               blocks local, bytes fetched, fetch latency, copy state
  create NAME (--target IMAGE | --proxy URL --cache FILE)
  remove NAME
  cache-all NAME [--rate-mib N] [--wait]   background copy of every missing block
  stop-copy NAME
  rate NAME --rate-mib N
  set-upstream NAME URL       re-point a proxy at another replica
  promote NAME [--wait]       proxy -> target once every block is local
  watch [NAME]                stream progress events`;

function parse<S extends OptionSpecs>(specs: S, argv: string[]): Config<S> {
  try {
    return parseConfig(specs, argv);
  } catch (err) {
    if (err instanceof ConfigError) throw new CliError(`${err.message}\n\n${USAGE}`);
    throw err;
  }
}

export async function run(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help") {
    console.log(cmd ? `${USAGE}\n\n${helpText("serve options:", serveSpecs)}` : USAGE);
    return cmd ? 0 : 2;
  }
  if (cmd === "serve") return serve(parse(serveSpecs, rest));
  const opts = parse(clientSpecs, rest);
  if (opts.help) {
    console.log(helpText(USAGE, clientSpecs));
    return 0;
  }
  const client = new BlockServiceClient(opts.server!, grpc.credentials.createInsecure());
  try {
    return await clientCommand(cmd, opts, client);
  } finally {
    client.close();
  }
}

async function serve(o: Config<typeof serveSpecs>): Promise<number> {
  if (o.help) {
    console.log(
      helpText("usage: vmhop block serve (--target IMAGE | --proxy URL --cache FILE) [options]", serveSpecs),
    );
    return 0;
  }
  if (o.target && o.proxy) throw new CliError("give either --target or --proxy, not both");
  if (o.proxy && !o.cache) throw new CliError("--proxy needs --cache FILE (the local copy of the disk)");
  if (o.cache && !o.proxy) throw new CliError("--cache is for proxy mode: give --proxy too");
  if (o.store && o["state-dir"]) throw new CliError("give --store or --state-dir, not both");
  if (o.store && !/^rediss?:\/\//.test(o.store))
    throw new CliError(
      `--store takes a redis:// URL (the embedded default is --state-dir), got '${o.store}'`,
    );
  if (o["state-key"] && !o.store) throw new CliError("--state-key is for --store");
  const log = createLogger({ svc: "block-server" });
  const maxConnections = o["max-connections"]!;
  if (!Number.isInteger(maxConnections) || maxConnections < 1)
    throw new CliError(`--max-connections must be a whole number of at least 1, not ${maxConnections}`);
  const closers: Closer[] = [];
  return serveUntilSignal(log, closers, async () => {
    const metrics = await serveMetrics(o.metrics, DEFAULT_METRICS["block-server"], log, closers);
    const table = await openTable(o, log);
    if (table) closers.push({ name: "export table", close: () => table.close() });
    const cacheDir =
      o["cache-dir"] ?? (table instanceof FileExportTable ? path.join(table.dir, "cache") : undefined);
    const bs = new BlockServer({
      log,
      table,
      hotSourceFor: upstreamHotSource,
      cacheDir,
      nbdLimits: { maxConnections },
    });
    closers.push({ name: "block-server (exports stay recorded)", close: () => bs.close() });
    closers.push({ name: "metrics binding", close: bindBlockServerMetrics(bs) });
    let spec: CreateExportSpec | undefined;
    if (o.target) spec = { name: o.name!, source: { mode: "target", imagePath: o.target } };
    if (o.proxy)
      spec = {
        name: o.name!,
        source: {
          mode: "proxy",
          upstreamUrl: o.proxy,
          cachePath: o.cache!,
          blockSize: o["block-size"],
          startBackgroundCopy: o.copy,
          rateLimitBytesPerSecond: (o["rate-mib"] ?? 0) * 2 ** 20,
          autoPromote: o["auto-promote"],
          upstreamHot: o["upstream-control"]
            ? upstreamHotSource(o["upstream-control"], new URL(o.proxy).pathname.slice(1))
            : undefined,
        },
      };
    // Given on the command line: not recorded (the command line brings it back), and it wins
    // over a recorded export of the same name, which restore() drops.
    if (spec)
      await bs.createExport(
        { ...spec, readOnly: o["read-only"], description: o.description },
        { persist: false },
      );
    const restored = await bs.restore();
    // Listen only now that every export asked for is open: a client that connects the moment
    // the port accepts finds it.
    for (const l of o.listen ?? []) await bs.listen(l);

    let grpcAddress: string | undefined;
    if (o.grpc !== "none") {
      const explicit = o.grpc !== undefined;
      const register = () => [blockService(bs)];
      let g: Awaited<ReturnType<typeof startGrpcServer>>;
      try {
        g = await startGrpcServer({
          serviceName: "block-server",
          listen: o.grpc ?? DEFAULT_GRPC,
          services: register(),
          log,
        });
      } catch (err) {
        if (explicit) throw new CliError(`cannot listen for gRPC on ${o.grpc}: ${(err as Error).message}`);
        log.warn("default gRPC port taken, using a free one", { wanted: DEFAULT_GRPC });
        g = await startGrpcServer({
          serviceName: "block-server",
          listen: "127.0.0.1:0",
          services: register(),
          log,
        });
      }
      closers.push({ name: "grpc", close: () => g.shutdown() });
      grpcAddress = g.address;
    }
    // One machine-readable ready line on stdout: scripts wait for it.
    console.log(
      JSON.stringify({
        ready: true,
        nbd: bs.nbdAddresses(),
        grpc: grpcAddress ?? null,
        exports: bs.names(),
        state: bs.stateLocation ?? null,
        restored: restored.restored,
        unavailable: restored.unavailable,
        metrics,
      }),
    );
  });
}

/** The export table `serve` records gRPC-created exports in, or undefined for none. */
async function openTable(o: Config<typeof serveSpecs>, log: Logger): Promise<ExportTable | undefined> {
  const first = o.listen?.[0];
  if (o.store) {
    if (!first) throw new CliError("--store needs an NBD --listen address to name this block-server");
    const store = await openStore(o.store);
    return new StoreExportTable(store, o["state-key"] ?? defaultStateKey(first), o.store);
  }
  if (o["state-dir"] === "none") return undefined;
  let dir = o["state-dir"];
  if (!dir) {
    const a = first ? parseListenAddress(first) : undefined;
    if (!a || ("port" in a && a.port === 0)) {
      log.warn(
        "exports created over gRPC are not recorded: no fixed NBD address to name them by; give --state-dir",
        {
          listen: first ?? null,
        },
      );
      return undefined;
    }
    dir = defaultStateDir(first!);
  }
  return FileExportTable.open(dir);
}

function call<Res>(fn: (cb: (err: grpc.ServiceError | null, res: Res) => void) => unknown): Promise<Res> {
  return new Promise((resolve, reject) =>
    fn((err, res) => {
      if (err) reject(new CliError(err.details || err.message, 1));
      else resolve(res);
    }),
  );
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

export function formatStatus(s: ExportStatus): string {
  const e = s.export!;
  const pct = s.blocksTotal ? ((100 * s.blocksLocal) / s.blocksTotal).toFixed(1) : "100.0";
  const mode = e.mode === 1 ? "target" : "proxy";
  const lines = [
    `${e.name}: ${mode}, ${mib(e.sizeBytes)}, ${e.connections} connection(s)${e.readOnly ? ", read-only" : ""}`,
    `  path      ${e.path}`,
  ];
  if (mode === "proxy")
    lines.push(
      `  upstream  ${e.upstreamUrl} (${s.upstreamConnected ? (s.upstreamZeroCopy ? "connected, zero-copy fetch" : "connected, one connection: fetches copied") : `down: ${s.upstreamError}`})`,
    );
  lines.push(
    `  local     ${s.blocksLocal}/${s.blocksTotal} blocks (${pct}%)`,
    `  fetched   on demand ${mib(s.bytesFetchedOnDemand)}, background ${mib(s.bytesFetchedBackground)}; written locally ${mib(s.bytesWrittenLocal)}`,
  );
  const l = s.onDemandFetchLatency;
  if (l?.count)
    lines.push(
      `  latency   on-demand fetch p50 ${l.p50Ms.toFixed(2)} ms, p99 ${l.p99Ms.toFixed(2)} ms, max ${l.maxMs.toFixed(2)} ms (${l.count})`,
    );
  const c = s.backgroundCopy;
  if (c && mode === "proxy")
    lines.push(
      `  copy      ${c.done ? "done" : c.running ? "running" : "stopped"}${c.rateLimitBytesPerSecond ? `, limit ${mib(c.rateLimitBytesPerSecond)}/s` : ""}, ${c.requestsInFlight} in flight${c.lastError ? `, last error: ${c.lastError}` : ""}`,
    );
  return lines.join("\n");
}

function need(name: string | undefined, what: string): string {
  if (!name) throw new CliError(`${what}: export NAME is required`);
  return name;
}

async function follow(
  client: BlockServiceClient,
  name: string,
  until: (ev: WatchProgressResponse) => boolean,
  json: boolean,
) {
  await new Promise<void>((resolve, reject) => {
    const stream = client.watchProgress({ name, intervalMs: 1000 });
    stream.on("data", (ev: WatchProgressResponse) => {
      const s = ev.event?.status;
      if (json) console.log(JSON.stringify(ev.event));
      else if (s) {
        const pct = s.blocksTotal ? ((100 * s.blocksLocal) / s.blocksTotal).toFixed(1) : "100";
        console.error(
          `${name}: ${pct}% local (${s.blocksLocal}/${s.blocksTotal} blocks)${ev.event?.message ? ` - ${ev.event.message}` : ""}`,
        );
      }
      if (until(ev)) {
        stream.cancel();
        resolve();
      }
    });
    stream.on("error", (err: grpc.ServiceError) =>
      err.code === grpc.status.CANCELLED ? resolve() : reject(new CliError(err.details, 1)),
    );
  });
}

async function clientCommand(
  cmd: string,
  o: Config<typeof clientSpecs>,
  client: BlockServiceClient,
): Promise<number> {
  const [name, arg] = o._;
  const rate = o["rate-mib"] !== undefined ? o["rate-mib"] * 2 ** 20 : 0;
  const show = (s: ExportStatus | undefined) => console.log(o.json ? JSON.stringify(s) : formatStatus(s!));
  switch (cmd) {
    case "list": {
      const r = await call<ListExportsResponse>((cb) => client.listExports({}, cb));
      if (o.json) console.log(JSON.stringify(r));
      else {
        console.log(`NBD: ${r.nbdListeners.join(", ") || "(none)"}`);
        for (const e of r.exports)
          console.log(
            `${e.name}\t${e.mode === 1 ? "target" : "proxy"}\t${mib(e.sizeBytes)}\t${e.path}${e.upstreamUrl ? `\t<- ${e.upstreamUrl}` : ""}`,
          );
      }
      return 0;
    }
    case "status": {
      const names = name
        ? [name]
        : (await call<ListExportsResponse>((cb) => client.listExports({}, cb))).exports.map((e) => e.name);
      for (const n of names)
        show((await call<GetExportStatusResponse>((cb) => client.getExportStatus({ name: n }, cb))).status);
      return 0;
    }
    case "create": {
      need(name, "create");
      if (!!o.target === !!o.proxy)
        throw new CliError("create needs exactly one of --target IMAGE or --proxy URL --cache FILE");
      const source = o.target
        ? { $case: "target" as const, value: { imagePath: o.target, sizeBytes: 0 } }
        : {
            $case: "proxy" as const,
            value: {
              upstreamUrl: o.proxy!,
              cachePath: o.cache ?? "",
              blockSize: 0,
              startBackgroundCopy: o.copy ?? false,
              rateLimitBytesPerSecond: rate,
              upstreamControl: "",
              autoPromote: false,
            },
          };
      const r = await call<CreateExportResponse>((cb) =>
        client.createExport(
          {
            name,
            source,
            readOnly: o["read-only"] ?? false,
            description: "",
            fencingToken: 0,
          },
          cb,
        ),
      );
      console.log(o.json ? JSON.stringify(r.export) : `created ${r.export?.name}`);
      return 0;
    }
    case "remove":
      await call<RemoveExportResponse>((cb) =>
        client.removeExport({ name: need(name, "remove"), fencingToken: 0, discardLocalCopy: false }, cb),
      );
      return 0;
    case "cache-all": {
      need(name, "cache-all");
      const r = await call<StartBackgroundCopyResponse>((cb) =>
        client.startBackgroundCopy(
          {
            name,
            rateLimitBytesPerSecond: rate,
            parallelism: 0,
            fencingToken: 0,
          },
          cb,
        ),
      );
      if (!o.wait) {
        show(r.status);
        return 0;
      }
      await follow(
        client,
        name,
        (ev) =>
          !!ev.event?.status?.backgroundCopy?.done || ev.event?.kind === ProgressKind.PROGRESS_KIND_COPY_DONE,
        o.json ?? false,
      );
      show((await call<GetExportStatusResponse>((cb) => client.getExportStatus({ name }, cb))).status);
      return 0;
    }
    case "stop-copy":
      show(
        (
          await call<StopBackgroundCopyResponse>((cb) =>
            client.stopBackgroundCopy({ name: need(name, "stop-copy"), fencingToken: 0 }, cb),
          )
        ).status,
      );
      return 0;
    case "rate":
      if (o["rate-mib"] === undefined) throw new CliError("rate needs --rate-mib N (0 = unlimited)");
      show(
        (
          await call<SetRateLimitResponse>((cb) =>
            client.setRateLimit(
              {
                name: need(name, "rate"),
                rateLimitBytesPerSecond: rate,
                fencingToken: 0,
              },
              cb,
            ),
          )
        ).status,
      );
      return 0;
    case "set-upstream":
      if (!arg) throw new CliError("set-upstream NAME URL: the new upstream URL is required");
      show(
        (
          await call<SetUpstreamResponse>((cb) =>
            client.setUpstream({ name: need(name, "set-upstream"), upstreamUrl: arg, fencingToken: 0 }, cb),
          )
        ).status,
      );
      return 0;
    case "promote":
      show(
        (
          await call<PromoteResponse>((cb) =>
            client.promote({ name: need(name, "promote"), wait: o.wait ?? false, fencingToken: 0 }, cb),
          )
        ).status,
      );
      return 0;
    case "watch":
      await follow(client, name ?? "", () => false, o.json ?? false);
      return 0;
    default:
      throw new CliError(`unknown block command '${cmd}'\n\n${USAGE}`);
  }
}
