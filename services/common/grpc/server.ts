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
import { clearStaleSocket } from "../stale-socket.js";
import { initTracing } from "../tracing.js";
import { tracingInterceptor } from "./interceptors.js";
import { grpcStatusOf } from "./status.js";

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

  const listen = parseListenAddress(opts.listen);
  if ("path" in listen) await clearStaleSocket(listen.path);
  const target = formatAddress(listen);
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

/**
 * Wraps a handler `(request) => response` as a grpc-js unary handler; what it throws is
 * answered by kind (status.ts): a ServiceError's status, anything else INTERNAL.
 */
export function unary<Req, Res>(fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res> | Res) {
  return (call: grpc.ServerUnaryCall<Req, Res>, callback: grpc.sendUnaryData<Res>) => {
    // Through a promise, so what fn throws at once is answered like what it rejects with.
    new Promise<Res>((resolve) => resolve(fn(call.request, call))).then(
      (res) => callback(null, res),
      (err) => callback(grpcStatusOf(err)),
    );
  };
}

/** Ends a server stream with the status of err, the way unary() answers it. */
export function failStream(call: grpc.ServerWritableStream<unknown, unknown>, err: unknown): void {
  call.emit("error", grpcStatusOf(err));
}
