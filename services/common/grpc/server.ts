// The one way to serve gRPC in vmhop: every service gets the standard grpc.health.v1
// health service, server reflection over all vmhop protos (so grpcurl works without
// .proto files), a trace span per RPC, and raised message limits.
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { HealthImplementation, protoPath as healthProtoPath } from "grpc-health-check";
import { formatAddress, parseListenAddress } from "../listen-address.js";
import type { Logger } from "../log.js";
import { initTracing } from "../tracing.js";
import { tracingInterceptor } from "./interceptors.js";

export const MAX_MESSAGE_BYTES = 64 << 20;

export interface ServiceRegistration {
  /** Fully qualified name, e.g. "vmhop.v1.BlockService" (what health checks ask for). */
  name: string;
  definition: grpc.ServiceDefinition;
  implementation: grpc.UntypedServiceImplementation;
}

export interface RunningGrpcServer {
  server: grpc.Server;
  /** host:port actually bound (port 0 resolved), or unix:path. */
  address: string;
  port: number;
  health: HealthImplementation;
  /** Marks every service NOT_SERVING, drains calls for up to graceMs, then forces. */
  shutdown(graceMs?: number): Promise<void>;
}

const descriptorPath = new URL("../../../gen/vmhop.binpb", import.meta.url);

function reflectionPackage(): protoLoader.PackageDefinition {
  const vmhop = protoLoader.loadFileDescriptorSetFromBuffer(readFileSync(descriptorPath));
  const health = protoLoader.loadSync(healthProtoPath);
  return { ...vmhop, ...health };
}

export async function startGrpcServer(opts: {
  serviceName: string;
  listen: string;
  services: ServiceRegistration[];
  log: Logger;
}): Promise<RunningGrpcServer> {
  const { tracer } = initTracing(opts.serviceName);
  const server = new grpc.Server({
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    interceptors: [tracingInterceptor(tracer, opts.log)],
  });
  const health = new HealthImplementation({ "": "SERVING" });
  for (const s of opts.services) {
    server.addService(s.definition, s.implementation);
    health.setStatus(s.name, "SERVING");
  }
  health.addToServer(server);
  // Reflection lists what this server really serves, not every vmhop service.
  new ReflectionService(reflectionPackage(), {
    services: [...opts.services.map((s) => s.name), "grpc.health.v1.Health"],
  }).addToServer(server);

  const target = formatAddress(parseListenAddress(opts.listen));
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(target, grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  const address = target.startsWith("unix:") ? target : target.replace(/:\d+$/, `:${port}`);
  opts.log.info("grpc listening", { address, services: opts.services.map((s) => s.name) });

  let closed: Promise<void> | undefined;
  const shutdown = (graceMs = 5000) => {
    closed ??= new Promise<void>((resolve) => {
      health.setStatus("", "NOT_SERVING");
      for (const s of opts.services) health.setStatus(s.name, "NOT_SERVING");
      const timer = setTimeout(() => server.forceShutdown(), graceMs);
      server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    return closed;
  };
  return { server, address, port, health, shutdown };
}

/** Maps an error thrown by service code to a gRPC status; errors may carry a `grpcCode`. */
export function toServiceError(err: unknown): Partial<grpc.StatusObject> {
  const e = err as { grpcCode?: number; message?: string };
  return { code: e?.grpcCode ?? grpc.status.INTERNAL, details: e?.message ?? String(err) };
}

/** An error that becomes the given gRPC status when thrown from a handler. */
export class RpcError extends Error {
  constructor(
    readonly grpcCode: grpc.status,
    message: string,
  ) {
    super(message);
    this.name = "RpcError";
  }
}

/**
 * Wraps an async handler `(request) => response` as a grpc-js unary handler. `mapError`
 * turns a service's own errors into ones carrying a `grpcCode` (e.g. an RpcError).
 */
export function unary<Req, Res>(
  fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>,
  mapError: (err: unknown) => unknown = (err) => err,
) {
  return (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>) => {
    fn(call.request, call).then(
      (res) => callback(null, res),
      (err) => callback(toServiceError(mapError(err))),
    );
  };
}
