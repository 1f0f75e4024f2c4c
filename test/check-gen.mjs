// Fails when gen/ differs from what `npm run gen` produces from proto/ now.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const out = mkdtempSync(join(tmpdir(), "vmhop-gen-"));
try {
  execFileSync("npx", ["buf", "generate", "-o", out], { cwd: root, stdio: "inherit" });
  execFileSync("npx", ["buf", "build", "-o", join(out, "gen", "vmhop.binpb")], {
    cwd: root,
    stdio: "inherit",
  });
  execFileSync("diff", ["-r", join(out, "gen"), join(root, "gen")], { stdio: "inherit" });
  console.log("gen/ is up to date");
} catch {
  console.error("gen/ is stale or generation failed: run `npm run gen` and commit the result");
  process.exit(1);
} finally {
  rmSync(out, { recursive: true, force: true });
}
