// One QEMU process on this host: start, pause, resume, stop, kill; QMP and the serial
// console attached; an unexpected exit turns the VM CRASHED with the reason.
import { type ChildProcess, spawn } from "node:child_process";
import { EventEmitter } from "node:events";
import {
  closeSync,
  existsSync,
  fstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { type Logger, silentLogger } from "../../common/log.js";
import { QmpClient } from "../qmp/client.js";
import { type Accel, hostAccel } from "./accel.js";
import { buildQemuArgs, type LaunchOptions, type RuntimePaths } from "./qemu-args.js";
import { SerialConsole } from "./serial.js";
import { type VmSpec, validateSpec } from "./spec.js";
import { qemuStartError } from "./start-error.js";
import { IllegalTransitionError, isLive, nextState, type VmEvent, type VmState } from "./states.js";

export interface VmOptions {
  /** Folder for the sockets and logs (created if absent). */
  runDir: string;
  qemuBinary?: string;
  log?: Logger;
  /** How long QEMU may take to open its QMP socket. */
  startTimeoutMs?: number;
}

type Events = { state: [state: VmState, reason?: string] };

type VmPaths = RuntimePaths & { qemuLog: string; specFile: string };

function vmPaths(runDir: string): VmPaths {
  return {
    qmpSocket: join(runDir, "qmp.sock"),
    serialSocket: join(runDir, "serial.sock"),
    serialLog: join(runDir, "serial.log"),
    qemuLog: join(runDir, "qemu.log"),
    pidFile: join(runDir, "qemu.pid"),
    specFile: join(runDir, "spec.json"),
  };
}

/**
 * In a VM's folder, a QEMU started elsewhere as a warm one (warm-pool.ts): the folder it was
 * started in, whose QMP socket path its command line names (for adoption after a restart).
 */
const WARM_ORIGIN = "warm-origin";

export class Vm extends EventEmitter<Events> {
  /** Changes only when a warm QEMU becomes a VM (becomeVm). */
  spec: VmSpec;
  readonly accel: Accel;
  paths: VmPaths;
  private current: VmState = "defined";
  private child: ChildProcess | undefined;
  /** QEMU found running by attach() (a page-server restart): no child handle, only its pid. */
  private adoptedPid: number | undefined;
  private shutdownSeen = false;
  private exited: Promise<void> | undefined;
  private qmpClient: QmpClient | undefined;
  private serialConsole: SerialConsole | undefined;
  /** How the QEMU this Vm spawned ended, once it has. */
  private exitStatus: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  /** Why the VM ended, once it has. */
  endReason: string | undefined;
  private log: Logger;

  constructor(
    spec: VmSpec,
    private readonly opts: VmOptions,
  ) {
    super();
    this.spec = validateSpec(spec);
    this.accel = !spec.accel || spec.accel === "auto" ? hostAccel() : spec.accel;
    this.log = (opts.log ?? silentLogger).child({ vm: spec.name });
    this.paths = vmPaths(opts.runDir);
  }

  get state(): VmState {
    return this.current;
  }
  get pid(): number | undefined {
    return this.child?.pid ?? this.adoptedPid;
  }
  get qmp(): QmpClient {
    if (!this.qmpClient)
      throw new Error(`VM ${this.spec.name} has no QMP connection (state ${this.current})`);
    return this.qmpClient;
  }
  get serial(): SerialConsole {
    if (!this.serialConsole)
      throw new Error(`VM ${this.spec.name} has no serial console (state ${this.current})`);
    return this.serialConsole;
  }

  /** The QEMU argv this VM runs with (for logs and debugging). */
  qemuArgs(launch: LaunchOptions = {}): string[] {
    return buildQemuArgs(this.spec, this.paths, this.accel, launch);
  }

  /** Spawns QEMU and attaches QMP and the serial console. */
  async start(launch: LaunchOptions = {}): Promise<void> {
    this.transition("spawn");
    mkdirSync(this.opts.runDir, { recursive: true });
    const args = this.qemuArgs({ trace: qemuTraceFromEnv(), ...launch });
    const bin = this.opts.qemuBinary ?? "qemu-system-x86_64";
    this.log.info("starting qemu", { accel: this.accel, args: args.join(" ") });
    // The spec beside the sockets lets a restarted page-server find and adopt this QEMU.
    writeFileSync(this.paths.specFile, JSON.stringify(this.spec));
    rmSync(join(this.opts.runDir, WARM_ORIGIN), { force: true });
    const out = openSync(this.paths.qemuLog, "a");
    // This start's part of the log (it is appended to across starts).
    const logStart = fstatSync(out).size;
    // Own process group: a signal to the page-server's group (Ctrl-C, restart) spares the VM.
    const child = spawn(bin, args, { stdio: ["ignore", out, out], detached: true });
    closeSync(out);
    this.child = child;
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.exitStatus = { code, signal };
        this.onExit(code, signal);
        resolve();
      });
      child.once("error", (err) => {
        this.onExit(null, null, `cannot run ${bin}: ${err.message}`);
        resolve();
      });
    });
    try {
      const timeoutMs = this.opts.startTimeoutMs ?? 15_000;
      const qmp = await Promise.race([
        QmpClient.connect(this.paths.qmpSocket, { timeoutMs, log: this.log }),
        this.exited.then(() => {
          throw new Error(`QEMU ended during start-up: ${this.endReason}`);
        }),
      ]);
      await this.attachConsoles(qmp, timeoutMs);
      this.transition(launch.incoming ? "up-incoming" : launch.paused ? "up-paused" : "up-running");
    } catch (err) {
      // QEMU often opens its QMP socket before it checks the rest of its arguments, then ends:
      // the connect fails first (ECONNRESET). Its own reason is in its log once it has ended.
      const ended = await Promise.race([this.exited.then(() => true), sleepMs(3000).then(() => false)]);
      const exit = this.exitStatus;
      await this.kill();
      if (ended && exit) throw qemuStartError(this.spec.name, exit, this.qemuLogSince(logStart));
      throw err;
    }
  }

  private async attachConsoles(qmp: QmpClient, timeoutMs: number): Promise<void> {
    this.qmpClient = qmp;
    qmp.on("event", (e) => {
      // A destination resumes by itself once post-copy (or the whole migration) hands over.
      if (e.event === "RESUME" && this.current === "incoming") this.transition("migrated-in");
      if (e.event === "SHUTDOWN") this.shutdownSeen = true;
    });
    const serial = new SerialConsole(this.paths.serialSocket);
    await serial.open(timeoutMs);
    this.serialConsole = serial;
  }

  /**
   * Adopts the QEMU a previous page-server started in `runDir` (its spec.json, pidfile and
   * sockets). Returns undefined when the folder holds no VM; a VM whose QEMU is gone comes
   * back crashed with the reason.
   */
  static async attach(runDir: string, opts: Omit<VmOptions, "runDir"> = {}): Promise<Vm | undefined> {
    const specFile = join(runDir, "spec.json");
    if (!existsSync(specFile)) return undefined;
    const vm = new Vm(JSON.parse(readFileSync(specFile, "utf8")) as VmSpec, { ...opts, runDir });
    await vm.adopt();
    return vm;
  }

  private async adopt(): Promise<void> {
    this.transition("spawn");
    let pid: number | undefined;
    try {
      pid = Number(readFileSync(this.paths.pidFile!, "utf8").trim()) || undefined;
    } catch {
      pid = undefined;
    }
    // The pid must still be this VM's QEMU (pids get reused): its argv names our QMP socket,
    // or for a QEMU that was warm, the one it was started with.
    const origin = readOptional(join(this.opts.runDir, WARM_ORIGIN));
    const sockets = [this.paths.qmpSocket, ...(origin ? [vmPaths(origin).qmpSocket] : [])];
    const ours = (p: number) => {
      try {
        const cmdline = readFileSync(`/proc/${p}/cmdline`, "utf8");
        return sockets.some((s) => cmdline.includes(s));
      } catch {
        return false;
      }
    };
    if (pid === undefined || !ours(pid)) {
      this.endReason = "QEMU ended while no page-server watched it";
      this.exited = Promise.resolve();
      this.transition("crash", this.endReason);
      return;
    }
    this.adoptedPid = pid;
    this.exited = (async () => {
      while (ours(pid)) await sleep(100);
      const clean = this.shutdownSeen || this.current === "stopping";
      this.onExit(
        clean ? 0 : null,
        null,
        clean ? undefined : "QEMU ended (adopted after a restart: exit status unknown)",
      );
    })();
    const qmp = await QmpClient.connect(this.paths.qmpSocket, { timeoutMs: 5000, log: this.log });
    await this.attachConsoles(qmp, 5000);
    const { status } = await qmp.execute<{ status: string }>("query-status");
    const event: VmEvent =
      status === "running"
        ? "up-running"
        : status === "inmigrate"
          ? "up-incoming"
          : status === "postmigrate" || status === "finish-migrate"
            ? "up-postmigrate"
            : "up-paused";
    this.log.info("adopted running qemu", { pid, status });
    this.transition(event);
  }

  /**
   * A warm QEMU (started for a VM shape, waiting for a stream: warm-pool.ts) becomes the VM
   * `spec` in `runDir`: its sockets, logs and pidfile move there (QEMU keeps them open, and a
   * unix socket is reached through its new name), spec.json is written there, and the folder
   * it came from is recorded for adoption after a restart. Its QMP and serial connections
   * stay as they are. A VM that lived here before leaves its old logs to be replaced.
   */
  becomeVm(spec: VmSpec, runDir: string): void {
    if (this.current !== "incoming")
      throw new Error(`warm QEMU ${this.spec.name} is ${this.current}, not waiting for a stream`);
    const next = validateSpec(spec);
    const from = this.paths;
    const to = vmPaths(runDir);
    mkdirSync(runDir, { recursive: true });
    for (const k of ["qmpSocket", "serialSocket", "serialLog", "qemuLog", "pidFile"] as const)
      if (from[k] && to[k]) renameSync(from[k], to[k]);
    writeFileSync(join(runDir, WARM_ORIGIN), this.opts.runDir);
    writeFileSync(to.specFile, JSON.stringify(next));
    rmSync(from.specFile, { force: true });
    this.log.info("warm qemu becomes a VM", { vm: next.name, runDir });
    this.spec = next;
    this.paths = to;
    this.opts.runDir = runDir;
    this.log = (this.opts.log ?? silentLogger).child({ vm: next.name });
  }

  async pause(): Promise<void> {
    this.check("pause");
    await this.qmp.execute("stop");
    this.transition("pause");
  }

  async resume(): Promise<void> {
    this.check("resume");
    await this.qmp.execute("cont");
    // The guest clock stood still; a pause is not a stall of the guest.
    this.serialConsole?.tracker.resetGap();
    this.transition("resume");
  }

  /** Asks QEMU to quit; kills it if it has not ended within the timeout. */
  async stop(timeoutMs = 5000): Promise<void> {
    if (!isLive(this.current)) return;
    this.transition("stop");
    try {
      await this.qmp.execute("quit", undefined, { timeoutMs });
    } catch (err) {
      this.log.warn("quit failed; killing qemu", { err });
    }
    const ended = await Promise.race([this.exited!.then(() => true), sleepMs(timeoutMs).then(() => false)]);
    if (!ended) await this.kill();
  }

  /** Lets go of QMP and the console, leaving QEMU running (for a page-server restart). */
  async detach(): Promise<void> {
    this.serialConsole?.close();
    await this.qmpClient?.close();
    this.child?.unref();
  }

  /** SIGKILL, waits for the exit. */
  async kill(): Promise<void> {
    const c = this.child;
    if (c && c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    if (!c && this.adoptedPid !== undefined && isLive(this.current)) {
      try {
        process.kill(this.adoptedPid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    await this.exited;
  }

  /** Resolves when QEMU has ended (immediately if it never started). */
  async waitExit(): Promise<void> {
    await this.exited;
  }

  /** The tail of QEMU's own stdout/stderr, for error reports. */
  qemuLogTail(lines = 5): string {
    try {
      return readFileSync(this.paths.qemuLog, "utf8").trim().split("\n").slice(-lines).join("\n");
    } catch {
      return "";
    }
  }

  /** QEMU's log from byte `start` on (empty when there is none). */
  private qemuLogSince(start: number): string {
    try {
      return readFileSync(this.paths.qemuLog).subarray(start).toString("utf8");
    } catch {
      return "";
    }
  }

  /** Records a state change decided elsewhere (e.g. the migration driver). */
  transition(event: VmEvent | "crash", reason?: string): void {
    const to = nextState(this.current, event);
    this.log.info("vm state", { from: this.current, to, event, reason });
    this.current = to;
    this.emit("state", to, reason);
  }

  private check(event: VmEvent): void {
    nextState(this.current, event); // throws IllegalTransitionError
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null, error?: string): void {
    if (this.endReason !== undefined) return;
    const tail = this.qemuLogTail(3);
    const how = error ?? (signal ? `killed by ${signal}` : `exited with code ${code}`);
    this.endReason = tail ? `${how}: ${tail}` : how;
    this.qmpClient?.close().catch(() => {});
    this.serialConsole?.close();
    const clean = code === 0 && !error;
    try {
      this.transition(clean ? "exit" : "crash", this.endReason);
    } catch (err) {
      if (!(err instanceof IllegalTransitionError)) throw err;
      this.transition("crash", this.endReason);
    }
  }
}

function readOptional(file: string): string | undefined {
  try {
    return readFileSync(file, "utf8").trim() || undefined;
  } catch {
    return undefined;
  }
}

function sleepMs(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

/** VMHOP_QEMU_TRACE: QEMU trace event patterns (comma-separated) for every VM's qemu.log. */
function qemuTraceFromEnv(): string[] | undefined {
  const v = process.env.VMHOP_QEMU_TRACE?.trim();
  return v ? v.split(",").filter(Boolean) : undefined;
}
