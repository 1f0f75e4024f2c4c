// Layers point one way: services/ never imports the test beds, tools, installation, benchmarks
// or tests (testbed/, cli/, deploy/, bench/, test/); it may import gen/ and packages.
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
