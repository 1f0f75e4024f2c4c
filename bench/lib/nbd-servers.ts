// NBD servers a benchmark starts as child processes (vmhop block serve, nbdkit, qemu-nbd),
// each on a free port, ready when an NBD handshake succeeds (nbdinfo), never after a sleep.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { promisify } from "node:util";
import { freePort } from "../../test/helpers/env.js";

const run = promisify(execFile);
const vmhopBin = new URL("../../bin/vmhop.js", import.meta.url).pathname;

export interface NbdServer {
  /** nbd://127.0.0.1:PORT/NAME */
  uri: string;
  port: number;
  close(): Promise<void>;
}

/** Resolves once `uri` answers an NBD handshake; rejects if the child dies or time runs out. */
export async function waitNbdReady(uri: string, child?: ChildProcess, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child && child.exitCode !== null)
      throw new Error(`server exited with ${child.exitCode} before ${uri} was ready`);
    try {
      await run("nbdinfo", ["--size", uri], { timeout: 5000 });
      return;
    } catch (err) {
      if (Date.now() > deadline)
        throw new Error(`${uri} not ready after ${timeoutMs} ms: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Starts `cmd args` and waits until it serves `name` on `port`. */
export async function startServer(
  cmd: string,
  args: string[],
  port: number,
  name: string,
): Promise<NbdServer> {
  const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr?.on("data", (b: Buffer) => {
    stderr = (stderr + b.toString()).slice(-4000);
  });
  const uri = `nbd://127.0.0.1:${port}/${name}`;
  try {
    await waitNbdReady(uri, child);
  } catch (err) {
    child.kill("SIGKILL");
    throw new Error(`${cmd} ${args.join(" ")}: ${(err as Error).message}\n${stderr}`);
  }
  return {
    uri,
    port,
    close: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, "exit");
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

export async function vmhopTarget(image: string, name = "disk0"): Promise<NbdServer> {
  const port = await freePort();
  const args = [
    vmhopBin,
    "block",
    "serve",
    "--target",
    image,
    "--name",
    name,
    "--listen",
    `127.0.0.1:${port}`,
    "--grpc",
    "none",
  ];
  return startServer(process.execPath, args, port, name);
}

export async function vmhopProxy(upstream: string, cache: string, name = "disk0"): Promise<NbdServer> {
  const port = await freePort();
  const args = [vmhopBin, "block", "serve", "--proxy", upstream, "--cache", cache, "--name", name];
  args.push("--listen", `127.0.0.1:${port}`, "--grpc", "none");
  return startServer(process.execPath, args, port, name);
}

export async function nbdkitFile(image: string, name = "disk0"): Promise<NbdServer> {
  const port = await freePort();
  return startServer("nbdkit", ["-f", "-i", "127.0.0.1", "-p", String(port), "file", image], port, name);
}

/** nbdkit's cow filter over its nbd plugin: a pass-through proxy that keeps no local copy of reads. */
export async function nbdkitCow(upstream: string, name = "disk0"): Promise<NbdServer> {
  const port = await freePort();
  const args = ["-f", "-i", "127.0.0.1", "-p", String(port), "--filter=cow", "nbd", `uri=${upstream}`];
  return startServer("nbdkit", args, port, name);
}

/** nbdkit's nbd plugin alone: a plain pass-through. */
export async function nbdkitNbd(upstream: string, name = "disk0"): Promise<NbdServer> {
  const port = await freePort();
  return startServer(
    "nbdkit",
    ["-f", "-i", "127.0.0.1", "-p", String(port), "nbd", `uri=${upstream}`],
    port,
    name,
  );
}

export async function qemuNbd(image: string, name = "disk0"): Promise<NbdServer> {
  const port = await freePort();
  const args = ["-f", "raw", "-x", name, "-b", "127.0.0.1", "-p", String(port), "-t", "--shared=8", image];
  return startServer("qemu-nbd", args, port, name);
}
