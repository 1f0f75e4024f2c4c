// Real gRPC clients for the standard services every vmhop server exposes: health and
// server reflection (what grpcurl uses), loaded from the protos the packages ship.
import { createRequire } from "node:module";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { protoPath as healthProtoPath } from "grpc-health-check";

const require = createRequire(import.meta.url);
const reflectionProto = require
  .resolve("@grpc/reflection")
  .replace(/build\/src\/index\.js$/, "build/proto/grpc/reflection/v1/reflection.proto");

type AnyClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

function ctor(protoFile: string, path: string[]): grpc.ServiceClientConstructor {
  const pkg = grpc.loadPackageDefinition(
    protoLoader.loadSync(protoFile, { keepCase: true, enums: String }),
  ) as Record<string, unknown>;
  return path.reduce<unknown>(
    (o, k) => (o as Record<string, unknown>)[k],
    pkg,
  ) as grpc.ServiceClientConstructor;
}

export async function healthCheck(address: string, service = ""): Promise<string> {
  const Health = ctor(healthProtoPath, ["grpc", "health", "v1", "Health"]);
  const c = new Health(address, grpc.credentials.createInsecure()) as unknown as AnyClient;
  try {
    return await new Promise((resolve, reject) =>
      c.Check({ service }, (err: Error | null, res: { status: string }) =>
        err ? reject(err) : resolve(res.status),
      ),
    );
  } finally {
    c.close();
  }
}

interface ReflectionResponse {
  list_services_response?: { service: { name: string }[] };
  file_descriptor_response?: { file_descriptor_proto: Buffer[] };
  error_response?: { error_message: string };
}

/** One request/response exchange on the reflection stream, as grpcurl does it. */
async function reflect(address: string, request: Record<string, string>): Promise<ReflectionResponse> {
  const Reflection = ctor(reflectionProto, ["grpc", "reflection", "v1", "ServerReflection"]);
  const c = new Reflection(address, grpc.credentials.createInsecure()) as unknown as AnyClient;
  try {
    return await new Promise((resolve, reject) => {
      const call = c.ServerReflectionInfo() as grpc.ClientDuplexStream<unknown, ReflectionResponse>;
      call.on("data", (res) => {
        call.end();
        if (res.error_response) reject(new Error(res.error_response.error_message));
        else resolve(res);
      });
      call.on("error", reject);
      call.write(request);
    });
  } finally {
    c.close();
  }
}

/** The services a server lists, as `grpcurl ADDR list` shows them. */
export async function reflectionListServices(address: string): Promise<string[]> {
  const res = await reflect(address, { list_services: "" });
  return (res.list_services_response?.service ?? []).map((s) => s.name).sort();
}

/** How many file descriptors reflection returns for the file defining a symbol. */
export async function reflectionFileContaining(address: string, symbol: string): Promise<number> {
  const res = await reflect(address, { file_containing_symbol: symbol });
  return res.file_descriptor_response?.file_descriptor_proto.length ?? 0;
}
