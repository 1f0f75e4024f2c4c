// Assertions uvu 0.5 lacks: a rejection whose message matches, and a gRPC call failing with a
// given status and details.
import type * as grpc from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";
import * as assert from "uvu/assert";

/** Awaits `p` (or calls `fn` and awaits it) and checks that it failed with a matching message. */
export async function rejects(
  p: (() => Promise<unknown>) | Promise<unknown>,
  pattern: RegExp,
): Promise<void> {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (err) {
    assert.match((err as Error).message, pattern);
    return;
  }
  assert.unreachable(`expected a rejection matching ${pattern}`);
}

/** Awaits a gRPC call and checks it failed with `code` and details matching `details`. */
export async function rejectsWithStatus(
  p: Promise<unknown>,
  code: grpc.status,
  details: RegExp,
): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: grpc.ServiceError) => e,
  );
  if (!err) assert.unreachable(`expected ${status[code]}, got success`);
  else {
    assert.is(status[err.code], status[code], err.details);
    assert.match(err.details, details);
  }
}
