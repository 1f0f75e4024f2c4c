// The one error model: the kind→status table is total and one-to-one, every service's error
// class answers its kind's status, and the shared unary()/failStream() wrappers answer it over a
// real gRPC connection, including a peer's status passed on through fromGrpcError.
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import { BlockServerError } from "../../services/block-server/errors.js";
import { ERROR_KINDS, type ErrorKind, ServiceError } from "../../services/common/errors.js";
import { failStream, startGrpcServer, unary } from "../../services/common/grpc/server.js";
import { fromGrpcError, grpcStatusOf, STATUS_OF_KIND } from "../../services/common/grpc/status.js";
import { silentLogger } from "../../services/common/log.js";
import { StoreError } from "../../services/common/store/index.js";
import { ControlError } from "../../services/control-plane/control-error.js";
import { BindingError } from "../../services/netreach/binding/types.js";
import { HostError } from "../../services/page-server/errors.js";
import { MigrationError } from "../../services/page-server/migration/driver.js";
import { VmSpecError } from "../../services/page-server/vm/spec.js";
import { IllegalTransitionError } from "../../services/page-server/vm/states.js";
import { LoadError } from "../../services/placement/service/load.js";
import { PlanError } from "../../services/placement/service/plans.js";
import { rejectsWithStatus } from "../helpers/assert.js";
import { suite, test } from "../helpers/uvu.js";

test("the table gives every kind its own status, and every gRPC error status has a kind", () => {
  const codes = ERROR_KINDS.map((k) => STATUS_OF_KIND[k]);
  assert.is(new Set(codes).size, ERROR_KINDS.length, "two kinds share a status");
  const errorStatuses = Object.values(grpc.status).filter((c) => typeof c === "number" && c !== 0);
  assert.equal(
    [...codes].sort((a, b) => a - b),
    (errorStatuses as number[]).sort((a, b) => a - b),
  );
  assert.is(Object.keys(STATUS_OF_KIND).length, ERROR_KINDS.length);
});

test("the statuses services rely on", () => {
  const expect: [ErrorKind, grpc.status][] = [
    ["invalid", grpc.status.INVALID_ARGUMENT],
    ["not-found", grpc.status.NOT_FOUND],
    ["exists", grpc.status.ALREADY_EXISTS],
    ["precondition", grpc.status.FAILED_PRECONDITION],
    ["aborted", grpc.status.ABORTED],
    ["unavailable", grpc.status.UNAVAILABLE],
    ["internal", grpc.status.INTERNAL],
  ];
  for (const [kind, code] of expect) assert.is(grpc.status[STATUS_OF_KIND[kind]], grpc.status[code], kind);
});

test("each service's errors answer their kind's status with their message; anything else is INTERNAL", () => {
  const cases: [unknown, grpc.status, string][] = [
    [new HostError("exists", "VM a exists"), grpc.status.ALREADY_EXISTS, "VM a exists"],
    [new ControlError("not-found", "unknown VM v"), grpc.status.NOT_FOUND, "unknown VM v"],
    [new BlockServerError("precondition", "stale token"), grpc.status.FAILED_PRECONDITION, "stale token"],
    [new PlanError("not-found", "plan p not found"), grpc.status.NOT_FOUND, "plan p not found"],
    [new StoreError("redis GET failed: down"), grpc.status.UNAVAILABLE, "redis GET failed: down"],
    [new VmSpecError("VM spec: vcpus"), grpc.status.INVALID_ARGUMENT, "VM spec: vcpus"],
    [
      new IllegalTransitionError("stopped", "pause"),
      grpc.status.FAILED_PRECONDITION,
      "VM in state stopped cannot pause",
    ],
    [new MigrationError("migration failed"), grpc.status.ABORTED, "migration failed"],
    [new LoadError("vms[2].cpu", "must be >= 0"), grpc.status.INVALID_ARGUMENT, "vms[2].cpu must be >= 0"],
    [new BindingError("invalid MAC"), grpc.status.INVALID_ARGUMENT, "invalid MAC"],
    [new Error("a bug"), grpc.status.INTERNAL, "a bug"],
    ["thrown string", grpc.status.INTERNAL, "thrown string"],
    [undefined, grpc.status.INTERNAL, "undefined"],
  ];
  for (const [err, code, details] of cases) {
    const st = grpcStatusOf(err);
    assert.is(grpc.status[st.code], grpc.status[code], String(err));
    assert.is(st.details, details);
  }
  // The per-service names stay (logs name them), the kind is the common one.
  const e = new HostError("invalid", "x");
  assert.ok(e instanceof ServiceError);
  assert.is(e.name, "HostError");
  assert.is(String(new StoreError("down")), "StoreError: down");
});

// A tiny service over a real gRPC server: Fail throws what the request names, Watch fails a stream.
type Req = { case: string; peer?: string };
const json = {
  requestSerialize: (v: unknown) => Buffer.from(JSON.stringify(v)),
  requestDeserialize: (b: Buffer) => JSON.parse(b.toString()) as Req,
  responseSerialize: (v: unknown) => Buffer.from(JSON.stringify(v)),
  responseDeserialize: (b: Buffer) => JSON.parse(b.toString()) as { ok: boolean },
};
const definition: grpc.ServiceDefinition = {
  Fail: { path: "/vmhop.test.Errors/Fail", requestStream: false, responseStream: false, ...json },
  Watch: { path: "/vmhop.test.Errors/Watch", requestStream: false, responseStream: true, ...json },
};
const Client = grpc.makeGenericClientConstructor(definition, "Errors");
type ErrorsClient = grpc.Client & {
  Fail(req: Req, cb: (err: grpc.ServiceError | null, res: { ok: boolean }) => void): void;
  Watch(req: Req): grpc.ClientReadableStream<{ ok: boolean }>;
};

const call = (c: ErrorsClient, req: Req) =>
  new Promise<{ ok: boolean }>((resolve, reject) =>
    c.Fail(req, (err, res) => (err ? reject(err) : resolve(res))),
  );

const throwers: Record<string, () => never> = {
  "not-found": () => {
    throw new ControlError("not-found", "unknown VM ghost");
  },
  store: () => {
    throw new StoreError("redis SET failed: connection refused");
  },
  plain: () => {
    throw new TypeError("x is undefined");
  },
};

const wire = suite<{ close: () => Promise<void>; address: string; client: ErrorsClient }>("over gRPC");

wire.before(async (ctx) => {
  const implementation: grpc.UntypedServiceImplementation = {
    Fail: unary(async (req: Req) => {
      if (req.case === "ok") return { ok: true };
      // A call to a peer whose failure this handler passes on, as netreach's anchor does.
      if (req.case === "peer") {
        const peer = new Client(req.peer!, grpc.credentials.createInsecure()) as unknown as ErrorsClient;
        try {
          await call(peer, { case: "not-found" }).catch((err: grpc.ServiceError) => {
            throw fromGrpcError(err);
          });
        } finally {
          peer.close();
        }
      }
      // Unconverted, a failed call's error is a bug to this service: INTERNAL.
      if (req.case === "peer-raw") {
        const peer = new Client(req.peer!, grpc.credentials.createInsecure()) as unknown as ErrorsClient;
        try {
          await call(peer, { case: "not-found" });
        } finally {
          peer.close();
        }
      }
      return throwers[req.case]();
    }),
    // Thrown at once (not rejected): answered the same way.
    Watch: (s: grpc.ServerWritableStream<Req, { ok: boolean }>) => {
      s.write({ ok: true });
      try {
        throwers[s.request.case]();
      } catch (err) {
        failStream(s, err);
      }
    },
  };
  const server = await startGrpcServer({
    serviceName: "errors-test",
    listen: "127.0.0.1:0",
    services: [{ name: "vmhop.test.Errors", definition, implementation }],
    log: silentLogger,
  });
  ctx.address = server.address;
  ctx.client = new Client(server.address, grpc.credentials.createInsecure()) as unknown as ErrorsClient;
  ctx.close = async () => {
    ctx.client.close();
    await server.shutdown(1000);
  };
});

wire.after(async (ctx) => {
  await ctx.close?.();
});

wire("unary answers the kind's status and the message; success passes", async ({ client }) => {
  assert.equal(await call(client, { case: "ok" }), { ok: true });
  await rejectsWithStatus(call(client, { case: "not-found" }), grpc.status.NOT_FOUND, /^unknown VM ghost$/);
  await rejectsWithStatus(
    call(client, { case: "store" }),
    grpc.status.UNAVAILABLE,
    /^redis SET failed: connection refused$/,
  );
  await rejectsWithStatus(call(client, { case: "plain" }), grpc.status.INTERNAL, /^x is undefined$/);
});

wire("a peer's status passes on through fromGrpcError, with the peer's words only", async (ctx) => {
  await rejectsWithStatus(
    call(ctx.client, { case: "peer", peer: ctx.address }),
    grpc.status.NOT_FOUND,
    /^unknown VM ghost$/,
  );
  await rejectsWithStatus(
    call(ctx.client, { case: "peer-raw", peer: ctx.address }),
    grpc.status.INTERNAL,
    /^5 NOT_FOUND: unknown VM ghost$/,
  );
});

wire("fromGrpcError keeps the failed call as the cause", async ({ client }) => {
  const err = await call(client, { case: "store" }).catch((e: grpc.ServiceError) => fromGrpcError(e));
  assert.ok(err instanceof ServiceError);
  assert.is(err.kind, "unavailable");
  assert.is(err.message, "redis SET failed: connection refused");
  assert.is((err.cause as grpc.ServiceError).code, grpc.status.UNAVAILABLE);
});

wire("failStream ends a stream with the kind's status after what it sent", async ({ client }) => {
  for (const [c, code, details] of [
    ["not-found", grpc.status.NOT_FOUND, "unknown VM ghost"],
    ["plain", grpc.status.INTERNAL, "x is undefined"],
  ] as const) {
    const got: unknown[] = [];
    const err = await new Promise<grpc.ServiceError>((resolve, reject) => {
      const s = client.Watch({ case: c });
      s.on("data", (m) => got.push(m));
      s.on("error", resolve);
      s.on("end", () => reject(new Error("stream ended without an error")));
    });
    assert.equal(got, [{ ok: true }]);
    assert.is(grpc.status[err.code], grpc.status[code]);
    assert.is(err.details, details);
  }
});

test.run();
wire.run();
