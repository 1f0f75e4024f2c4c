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
  const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(protoFile, { keepCase: true, enums: String })) as Record<
    string,
    unknown
  >;
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

/** Asks server reflection for the list of services, as `grpcurl ADDR list` does. */
export async function reflectionListServices(address: string): Promise<string[]> {
  const Reflection = ctor(reflectionProto, ["grpc", "reflection", "v1", "ServerReflection"]);
  const c = new Reflection(address, grpc.credentials.createInsecure()) as unknown as AnyClient;
  try {
    return await new Promise((resolve, reject) => {
      const call = c.ServerReflectionInfo() as grpc.ClientDuplexStream<
        unknown,
        { list_services_response?: { service: { name: string }[] } }
      >;
      call.on("data", (res) => {
        resolve((res.list_services_response?.service ?? []).map((s: { name: string }) => s.name).sort());
        call.end();
      });
      call.on("error", reject);
      call.write({ list_services: "" });
    });
  } finally {
    c.close();
  }
}

/** Asks reflection for the file defining a symbol; returns the serialized descriptors' count. */
export async function reflectionFileContaining(address: string, symbol: string): Promise<number> {
  const Reflection = ctor(reflectionProto, ["grpc", "reflection", "v1", "ServerReflection"]);
  const c = new Reflection(address, grpc.credentials.createInsecure()) as unknown as AnyClient;
  try {
    return await new Promise((resolve, reject) => {
      const call = c.ServerReflectionInfo() as grpc.ClientDuplexStream<
        unknown,
        {
          file_descriptor_response?: { file_descriptor_proto: Buffer[] };
          error_response?: { error_message: string };
        }
      >;
      call.on("data", (res) => {
        call.end();
        if (res.error_response) reject(new Error(res.error_response.error_message));
        else resolve(res.file_descriptor_response?.file_descriptor_proto.length ?? 0);
      });
      call.on("error", reject);
      call.write({ file_containing_symbol: symbol });
    });
  } finally {
    c.close();
  }
}
