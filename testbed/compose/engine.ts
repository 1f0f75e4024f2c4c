// A Docker-compatible engine for docker-compose without a Docker engine: podman's API service
// on a socket of our own (`podman system service`), with this repository's containers.conf;
// stopped when the bed is done. docker-compose (Debian's 1.29) drives it through DOCKER_HOST.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { podman, podmanEnv, type RunOptions, type RunResult, repoRoot, run } from "./podman.js";

export interface ComposeEngine {
  /** docker-compose ARGS for this project and file. */
  compose(args: string[], o?: Pick<RunOptions, "allowFail">): Promise<RunResult>;
  /**
   * `docker-compose down -v`, then whatever of the project it left (it removes containers in
   * parallel, and a page-server whose network a site agent shares goes first and fails): the
   * project's containers, volumes and network removed by label with podman itself.
   */
  down(): Promise<void>;
  close(): Promise<void>;
}

export async function startEngine(o: {
  project: string;
  file?: string;
  log: string;
  env?: NodeJS.ProcessEnv;
}): Promise<ComposeEngine> {
  const dir = mkdtempSync(join(tmpdir(), "vmhop-podman-"));
  const sock = join(dir, "podman.sock");
  const svc: ChildProcess = spawn("podman", ["system", "service", "--time=0", `unix://${sock}`], {
    env: podmanEnv(),
    stdio: "ignore",
  });
  const exited = new Promise<void>((resolve) => svc.once("exit", () => resolve()));
  const close = async () => {
    if (svc.exitCode === null && svc.signalCode === null) {
      svc.kill("SIGTERM");
      await Promise.race([exited, sleep(5000).then(() => svc.kill("SIGKILL"))]);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  for (let i = 0; !existsSync(sock); i++) {
    if (i > 100 || svc.exitCode !== null) {
      await close();
      throw new Error("podman system service did not open its socket within 10 s");
    }
    await sleep(100);
  }
  const env = podmanEnv({ ...o.env, DOCKER_HOST: `unix://${sock}`, COMPOSE_PROJECT_NAME: o.project });
  const file = o.file ?? join(repoRoot, "docker-compose.yml");
  const compose: ComposeEngine["compose"] = (args, ro = {}) =>
    run("docker-compose", ["-p", o.project, "-f", file, ...args], { ...ro, log: o.log, env });
  const down = async () => {
    await compose(["down", "-v", "-t", "10"], { allowFail: true });
    const label = `label=com.docker.compose.project=${o.project}`;
    const q = { log: o.log, allowFail: true };
    const ids = (r: RunResult) => r.out.split("\n").filter(Boolean);
    const cs = ids(await podman(["ps", "-aq", "--filter", label], q));
    if (cs.length > 0) await podman(["rm", "-f", "-t", "5", ...cs], q);
    const vs = ids(await podman(["volume", "ls", "-q", "--filter", label], q));
    if (vs.length > 0) await podman(["volume", "rm", "-f", ...vs], q);
    const ns = ids(await podman(["network", "ls", "-q", "--filter", label], q));
    if (ns.length > 0) await podman(["network", "rm", "-f", ...ns], q);
  };
  return { compose, down, close };
}
