// docker-compose.yml stays valid (no Docker engine here: `docker-compose config` checks
// the file itself) and every vmhop command it runs is one the CLI knows.
import * as assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { gate } from "../helpers/env.js";
import { suite } from "../helpers/uvu.js";

const root = new URL("../..", import.meta.url).pathname;
const test = gate(suite("docker-compose.yml"), ["docker-compose"], "compose validation");

interface Service {
  command?: string[];
  entrypoint?: string[];
  image?: string;
}

function services(): Record<string, Service> {
  return (
    JSON.parse(
      execFileSync(
        "python3",
        ["-c", "import sys,yaml,json;print(json.dumps(yaml.safe_load(open('docker-compose.yml'))))"],
        { cwd: root, encoding: "utf8" },
      ),
    ) as { services: Record<string, Service> }
  ).services;
}

test("validates with docker-compose config", () => {
  execFileSync("docker-compose", ["config", "-q"], { cwd: root, stdio: "pipe" });
});

test("each service command is accepted by the vmhop CLI", () => {
  // Services running vmhop: its image with its entrypoint, or a wrapper ending in `exec node bin/vmhop.js`.
  const vmhop = Object.entries(services()).filter(
    ([, s]) => s.image === "vmhop:dev" && (!s.entrypoint || s.entrypoint.join(" ").includes("bin/vmhop.js")),
  );
  assert.ok(vmhop.length >= 9, `${vmhop.length} vmhop services`);
  for (const [name, s] of vmhop) {
    const [svc, sub, third] = s.command ?? [];
    // `--help` after the subcommand: parses the command line without starting anything.
    const words = svc === "netreach" ? [svc, sub, third] : [svc, sub];
    const out = execFileSync("node", ["bin/vmhop.js", ...words, "--help"], { cwd: root, encoding: "utf8" });
    assert.match(out, /usage/i, `${name}: ${words.join(" ")}`);
  }
});

test("no address handed to a peer is 0.0.0.0: page-servers and site agents advertise their service name", () => {
  for (const [name, s] of Object.entries(services())) {
    const cmd = s.command ?? [];
    const flag = (f: string) => cmd[cmd.indexOf(f) + 1];
    if (cmd[0] === "page") assert.equal(flag("--channel-advertise"), `${name}:7403`, name);
    if (cmd[0] === "netreach" && cmd[1] === "site")
      assert.match(flag("--advertise"), /^page-[ab]:7411$/, name);
  }
});

test.run();
