// Layers point one way: services/ never imports the test beds, tools, installation, benchmarks
// or tests (testbed/, cli/, deploy/, bench/, test/); it may import gen/ and packages. Within
// services/, only the gRPC edge imports gRPC (@grpc/*): domain code throws ServiceErrors
// (services/common/errors.ts) and the edge answers their status.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import * as assert from "uvu/assert";
import { test } from "../helpers/uvu.js";

const root = new URL("../..", import.meta.url).pathname;

function tsFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((e) => {
    const p = join(dir, e);
    return statSync(p).isDirectory() ? tsFiles(p) : p.endsWith(".ts") ? [p] : [];
  });
}

/** Relative module specifiers of a file: static imports/exports and dynamic import("…"). */
function specifiers(src: string): string[] {
  const out: string[] = [];
  for (const m of src.matchAll(/(?:from|import)\s*\(?\s*"(\.{1,2}\/[^"]+)"/g)) out.push(m[1]);
  return out;
}

test("no file under services/ imports testbed/, cli/, deploy/, bench/ or test/", () => {
  const files = tsFiles(join(root, "services"));
  assert.ok(files.length > 100, `found only ${files.length} service files`);
  const bad: string[] = [];
  for (const f of files)
    for (const s of specifiers(readFileSync(f, "utf8"))) {
      const to = relative(root, resolve(dirname(f), s));
      if (!to.startsWith("services/") && !to.startsWith("gen/")) bad.push(`${relative(root, f)} -> ${to}`);
    }
  assert.equal(bad, [], bad.join("\n"));
});

/** Package specifiers of a file (not relative ones): static imports/exports and dynamic import("…"). */
function packages(src: string): string[] {
  const out: string[] = [];
  for (const m of src.matchAll(/(?:from|import)\s*\(?\s*"([^".][^"]*)"/g)) out.push(m[1]);
  return out;
}

// The gRPC edge: the adapters (a grpc/ folder or a grpc.ts: the services, their message
// conversions, the shared server, wrappers and status table) and a service's clients of gRPC
// services (SERVICE/client.ts, SERVICE/NAME-client.ts, and control-plane/peer-call.ts under them).
const GRPC_EDGE = [
  /\/grpc\//,
  /\/grpc\.ts$/,
  /^services\/[^/]+\/([a-z]+-)?client\.ts$/,
  /^services\/control-plane\/peer-call\.ts$/,
];
// Commands that are themselves clients of a service: `vmhop block list|status|…` drives a
// block-server's BlockService; `vmhop placement replay` plays a trace into a PlacementService.
const GRPC_COMMANDS = ["services/block-server/cli.ts", "services/placement/service/replay.ts"];

const onEdge = (file: string) => GRPC_EDGE.some((re) => re.test(file)) || GRPC_COMMANDS.includes(file);
const speaksGrpc = (src: string) => packages(src).some((p) => p.startsWith("@grpc/"));

test("only the gRPC edge (adapters in grpc/ or grpc.ts, clients, two client commands) imports @grpc/*", () => {
  const bad: string[] = [];
  for (const f of tsFiles(join(root, "services"))) {
    const file = relative(root, f);
    if (!onEdge(file) && speaksGrpc(readFileSync(f, "utf8"))) bad.push(file);
  }
  assert.equal(bad, [], `domain code importing gRPC (throw a ServiceError instead):\n${bad.join("\n")}`);
  // The named commands still are clients (else they leave the list).
  for (const file of GRPC_COMMANDS) assert.ok(speaksGrpc(readFileSync(join(root, file), "utf8")), file);
});

test("the gRPC check sees a violation (domain files are off the edge; type and dynamic imports count)", () => {
  for (const file of [
    "services/control-plane/executor.ts",
    "services/page-server/host.ts",
    "services/netreach/migration-hooks.ts",
    "services/common/errors.ts",
    "services/block-server/nbd/client/client.ts",
  ])
    assert.not.ok(onEdge(file), file);
  for (const file of [
    "services/page-server/grpc/convert.ts",
    "services/control-plane/grpc.ts",
    "services/control-plane/page-client.ts",
  ])
    assert.ok(onEdge(file), file);
  assert.ok(speaksGrpc('import { status as grpcStatus } from "@grpc/grpc-js";'));
  assert.ok(speaksGrpc('import type * as grpc from "@grpc/grpc-js";'));
  assert.ok(speaksGrpc('const g = await import("@grpc/grpc-js");'));
  assert.not.ok(speaksGrpc('import { ServiceError } from "../common/errors.js";'));
});

test("the check sees a violation (a specifier that leaves services/ is caught)", () => {
  const f = join(root, "services/netreach/cli.ts");
  const to = relative(
    root,
    resolve(dirname(f), specifiers('import { x } from "../../testbed/netns.js";')[0]),
  );
  assert.is(to, "testbed/netns.js");
  assert.equal(specifiers('const m = await import("../../cli/tools.js");'), ["../../cli/tools.js"]);
});

test.run();
