// BlockService: the gRPC face of a BlockServer. Validation, errors and fencing come from the
// BlockServer; this layer admits each changing call's fencing token before it acts and streams
// progress (errors answer their kind's status: common/grpc/status.ts).
import * as grpc from "@grpc/grpc-js";
import {
  BlockServiceClient,
  type BlockServiceServer,
  BlockServiceService,
  ProgressKind,
  type WatchProgressRequest,
  type WatchProgressResponse,
} from "../../../gen/vmhop/v1/block.js";
import { failStream, MAX_MESSAGE_BYTES, type ServiceRegistration, unary } from "../../common/grpc/server.js";
import type { BlockServer, CreateExportSpec, ProgressEvent } from "../block-server.js";
import { BlockServerError } from "../errors.js";
import type { HotSource } from "../proxy/copy-order.js";
import { exportToPb, progressKindToPb, statusToPb } from "./convert.js";

function requireName(name: string): string {
  if (!name) throw new BlockServerError("invalid", "name is required");
  return name;
}

/** A hot-block source that asks an upstream block-server's GetHotBlocks. */
export function upstreamHotSource(address: string, exportName: string): HotSource {
  const client = new BlockServiceClient(address, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
  });
  return () =>
    new Promise((resolve) => {
      client.getHotBlocks(
        { name: exportName, limit: 4096 },
        new grpc.Metadata(),
        { deadline: Date.now() + 2000 },
        (err, res) => resolve(err ? [] : res.ranges.map((r) => ({ offset: r.offset, length: r.length }))),
      );
    });
}

export function blockService(bs: BlockServer): ServiceRegistration {
  const impl: BlockServiceServer = {
    createExport: unary(async (req) => {
      let spec: CreateExportSpec;
      const src = req.source;
      if (src?.$case === "target") {
        spec = {
          name: req.name,
          description: req.description,
          readOnly: req.readOnly,
          fencingToken: req.fencingToken,
          source: { mode: "target", imagePath: src.value.imagePath, sizeBytes: src.value.sizeBytes },
        };
      } else if (src?.$case === "proxy") {
        const p = src.value;
        const exportName = (() => {
          try {
            return new URL(p.upstreamUrl).pathname.replace(/^\//, "");
          } catch {
            return "";
          }
        })();
        spec = {
          name: req.name,
          description: req.description,
          readOnly: req.readOnly,
          fencingToken: req.fencingToken,
          source: {
            mode: "proxy",
            upstreamUrl: p.upstreamUrl,
            cachePath: p.cachePath,
            blockSize: p.blockSize,
            startBackgroundCopy: p.startBackgroundCopy,
            rateLimitBytesPerSecond: p.rateLimitBytesPerSecond,
            autoPromote: p.autoPromote,
            upstreamControl: p.upstreamControl,
            upstreamHot: p.upstreamControl ? upstreamHotSource(p.upstreamControl, exportName) : undefined,
          },
        };
      } else {
        throw new BlockServerError("invalid", "source is required: target or proxy");
      }
      return { export: exportToPb(await bs.createExport(spec)) };
    }),
    removeExport: unary(async (req) => {
      await bs.fence(requireName(req.name), req.fencingToken);
      await bs.removeExport(req.name, { discardLocalCopy: req.discardLocalCopy });
      return {};
    }),
    listExports: unary(() => ({
      exports: bs.names().map((n) => exportToPb(bs.info(n))),
      nbdListeners: bs.nbdAddresses(),
    })),
    getExportStatus: unary((req) => ({ status: statusToPb(bs.status(requireName(req.name))) })),
    startBackgroundCopy: unary(async (req) => {
      await bs.fence(requireName(req.name), req.fencingToken);
      return {
        status: statusToPb(bs.startCopy(req.name, { rateBytesPerSec: req.rateLimitBytesPerSecond })),
      };
    }),
    stopBackgroundCopy: unary(async (req) => {
      await bs.fence(requireName(req.name), req.fencingToken);
      return { status: statusToPb(await bs.stopCopy(req.name)) };
    }),
    setRateLimit: unary(async (req) => {
      await bs.fence(requireName(req.name), req.fencingToken);
      return { status: statusToPb(bs.setRateLimit(req.name, req.rateLimitBytesPerSecond)) };
    }),
    setUpstream: unary(async (req) => {
      if (!req.upstreamUrl) throw new BlockServerError("invalid", "upstream_url is required");
      await bs.fence(requireName(req.name), req.fencingToken);
      return { status: statusToPb(await bs.setUpstream(req.name, req.upstreamUrl)) };
    }),
    promote: unary(async (req) => {
      await bs.fence(requireName(req.name), req.fencingToken);
      return { status: statusToPb(await bs.promote(req.name, { wait: req.wait })) };
    }),
    getHotBlocks: unary((req) => ({ ranges: bs.hotBlocks(requireName(req.name), req.limit || 4096) })),
    watchProgress: (call: grpc.ServerWritableStream<WatchProgressRequest, WatchProgressResponse>) =>
      watchProgress(bs, call),
  };
  return { name: "vmhop.v1.BlockService", definition: BlockServiceService, implementation: impl };
}

/** Streams events as they happen plus a periodic status per export, until cancelled. */
function watchProgress(
  bs: BlockServer,
  call: grpc.ServerWritableStream<WatchProgressRequest, WatchProgressResponse>,
) {
  const { name } = call.request;
  if (name && !bs.names().includes(name)) {
    failStream(call, new BlockServerError("not-found", `no export named ${JSON.stringify(name)}`));
    return;
  }
  const interval = Math.max(50, call.request.intervalMs || 1000);
  const send = (exportName: string, kind: ProgressKind, message: string) => {
    let status: ReturnType<typeof statusToPb> | undefined;
    try {
      status = statusToPb(bs.status(exportName));
    } catch {
      status = undefined; // removed meanwhile: the event still goes out
    }
    call.write({ event: { name: exportName, kind, status, message, timeUnixMs: Date.now() } });
  };
  const onEvent = (ev: ProgressEvent) => {
    if (!name || ev.name === name) send(ev.name, progressKindToPb(ev.kind), ev.message);
  };
  const tick = () => {
    for (const n of name ? [name] : bs.names())
      if (bs.names().includes(n)) send(n, ProgressKind.PROGRESS_KIND_PERIODIC, "");
  };
  bs.on("progress", onEvent);
  tick();
  const timer = setInterval(tick, interval);
  const stop = () => {
    clearInterval(timer);
    bs.off("progress", onEvent);
  };
  call.on("cancelled", stop);
  call.on("close", stop);
  call.on("error", stop);
}
