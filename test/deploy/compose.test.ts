// docker-compose.yml stays valid (no Docker engine here: `docker-compose config` checks
// the file itself) and every vmhop command it runs is one the CLI knows.
import * as assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { gate } from "../helpers/env.js";
import { suite } from "../helpers/uvu.js";

const root = new URL("../..", import.meta.url).pathname;
const test = gate(suite("docker-compose.yml"), ["docker-compose"], "compose validation");

test("validates with docker-compose config", () => {
  execFileSync("docker-compose", ["config", "-q"], { cwd: root, stdio: "pipe" });
});

test("each service command is accepted by the vmhop CLI", () => {
  const cfg = JSON.parse(
    execFileSync(
      "python3",
      ["-c", "import sys,yaml,json;print(json.dumps(yaml.safe_load(open('docker-compose.yml'))))"],
      {
        cwd: root,
        encoding: "utf8",
      },
    ),
  ) as { services: Record<string, { command?: string[]; image?: string }> };
  const vmhop = Object.entries(cfg.services).filter(([, s]) => s.image === "vmhop:dev");
  assert.ok(vmhop.length >= 4);
  for (const [name, s] of vmhop) {
    const [svc, sub] = s.command ?? [];
    // `--help` after the subcommand: parses the command line without starting anything.
    const out = execFileSync("node", ["bin/vmhop.js", svc, sub, "--help"], { cwd: root, encoding: "utf8" });
    assert.match(out, /usage/i, `${name}: ${svc} ${sub}`);
  }
});

test.run();
