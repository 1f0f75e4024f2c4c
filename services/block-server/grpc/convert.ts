// Block-server domain types <-> BlockService protobuf messages.
import {
  ExportMode,
  type Export as PbExport,
  type ExportStatus as PbExportStatus,
  ProgressKind as PbProgressKind,
} from "../../../gen/vmhop/v1/block.js";
import type { ExportInfo, ExportStatus, ProgressKind } from "../block-server.js";

export function exportToPb(i: ExportInfo): PbExport {
  return {
    name: i.name,
    mode: i.mode === "target" ? ExportMode.EXPORT_MODE_TARGET : ExportMode.EXPORT_MODE_PROXY,
    path: i.path,
    upstreamUrl: i.upstreamUrl,
    readOnly: i.readOnly,
    sizeBytes: i.size,
    blockSize: i.blockSize,
    connections: i.connections,
    description: i.description,
  };
}

export function statusToPb(s: ExportStatus): PbExportStatus {
  return {
    export: exportToPb(s.info),
    blocksTotal: s.blocksTotal,
    blocksLocal: s.blocksLocal,
    bytesFetchedOnDemand: s.bytesFetchedOnDemand,
    bytesFetchedBackground: s.bytesFetchedBackground,
    bytesWrittenLocal: s.bytesWrittenLocal,
    bytesRead: s.bytesRead,
    onDemandFetchLatency: {
      count: s.fetchLatency.count,
      p50Ms: s.fetchLatency.p50Ms,
      p99Ms: s.fetchLatency.p99Ms,
      maxMs: s.fetchLatency.maxMs,
    },
    backgroundCopy: {
      running: s.copy.running,
      rateLimitBytesPerSecond: s.copy.rateBytesPerSec,
      requestsInFlight: s.copy.inFlight,
      done: s.copy.done,
      lastError: s.copy.lastError,
    },
    upstreamConnected: s.upstreamConnected,
    upstreamError: s.upstreamError,
    upstreamZeroCopy: s.upstreamZeroCopy,
  };
}

const kinds: Record<ProgressKind, PbProgressKind> = {
  "copy-started": PbProgressKind.PROGRESS_KIND_COPY_STARTED,
  "copy-stopped": PbProgressKind.PROGRESS_KIND_COPY_STOPPED,
  "copy-done": PbProgressKind.PROGRESS_KIND_COPY_DONE,
  promoted: PbProgressKind.PROGRESS_KIND_PROMOTED,
  "upstream-lost": PbProgressKind.PROGRESS_KIND_UPSTREAM_LOST,
  "upstream-restored": PbProgressKind.PROGRESS_KIND_UPSTREAM_RESTORED,
  "export-removed": PbProgressKind.PROGRESS_KIND_EXPORT_REMOVED,
};

export function progressKindToPb(k: ProgressKind): PbProgressKind {
  return kinds[k];
}
