// The liveness checks' view of a peer (health-client.ts, host-liveness.ts): a peer that answers
// late is slow, one that is gone is not; only-slow misses take
// SLOW_FACTOR times as many rounds to make a host down.
import * as grpc from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";
import * as assert from "uvu/assert";
import { HealthCheckError, HealthClients } from "../../services/control-plane/health-client.js";
import { livenessOf, SLOW_FACTOR } from "../../services/control-plane/host-liveness.js";
import { test } from "../helpers/uvu.js";

test("up, suspect, down from the misses in a row; only-slow misses need SLOW_FACTOR times as many", () => {
  assert.equal(
    [0, 1, 2, 3].map((n) => livenessOf(n, 3)),
    ["up", "suspect", "suspect", "down"],
  );
  assert.is(livenessOf(3, 3, true), "suspect");
  assert.is(livenessOf(SLOW_FACTOR * 3 - 1, 3, true), "suspect");
  assert.is(livenessOf(SLOW_FACTOR * 3, 3, true), "down");
  assert.is(livenessOf(0, 3, true), "up");
});

test("a peer answering late is slow; a peer gone is not", async () => {
  let answer = true;
  const server = new grpc.Server();
  server.addService(healthService as unknown as grpc.ServiceDefinition, {
    check: (_call: unknown, cb: (e: null, r: { status: number }) => void) => {
      if (answer) cb(null, { status: 1 });
      // Else never answered in time: a busy process.
      else setTimeout(() => cb(null, { status: 1 }), 2000);
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) =>
      e ? reject(e) : resolve(p),
    ),
  );
  const clients = new HealthClients();
  try {
    const c = clients.get(`127.0.0.1:${port}`);
    await c.check(5000); // connected
    answer = false;
    const late = await c.check(200).then(
      () => undefined,
      (e) => e as HealthCheckError,
    );
    assert.instance(late, HealthCheckError);
    assert.is(late!.slow, true, late!.message);
    server.forceShutdown();
    const gone = await c.check(1000).then(
      () => undefined,
      (e) => e as HealthCheckError,
    );
    assert.instance(gone, HealthCheckError);
    assert.is(gone!.slow, false, gone!.message);
  } finally {
    clients.close();
    server.forceShutdown();
  }
});

test.run();
