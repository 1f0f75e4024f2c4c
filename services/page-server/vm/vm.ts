// One QEMU process on this host: start, pause, resume, stop, kill; QMP and the serial
// console attached; an unexpected exit turns the VM CRASHED with the reason.
import { type ChildProcess, spawn } from "node:child_process";
import { EventEmitter } from "node:events";
import { closeSync, mkdirSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { type Logger, silentLogger } from "../../common/log.js";
import { QmpClient } from "../qmp/client.js";
import { type Accel, hostAccel } from "./accel.js";
import { buildQemuArgs, type LaunchOptions, type RuntimePaths } from "./qemu-args.js";
import { SerialConsole } from "./serial.js";
import { type VmSpec, validateSpec } from "./spec.js";
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

export class Vm extends EventEmitter<Events> {
  readonly spec: VmSpec;
  readonly accel: Accel;
  readonly paths: RuntimePaths & { qemuLog: string };
  private current: VmState = "defined";
  private child: ChildProcess | undefined;
  private exited: Promise<void> | undefined;
  private qmpClient: QmpClient | undefined;
  private serialConsole: SerialConsole | undefined;
  /** Why the VM ended, once it has. */
  endReason: string | undefined;
  private readonly log: Logger;

  constructor(
    spec: VmSpec,
    private readonly opts: VmOptions,
  ) {
    super();
    this.spec = validateSpec(spec);
    this.accel = !spec.accel || spec.accel === "auto" ? hostAccel() : spec.accel;
    this.log = (opts.log ?? silentLogger).child({ vm: spec.name });
    this.paths = {
      qmpSocket: join(opts.runDir, "qmp.sock"),
      serialSocket: join(opts.runDir, "serial.sock"),
      serialLog: join(opts.runDir, "serial.log"),
      qemuLog: join(opts.runDir, "qemu.log"),
    };
  }

  get state(): VmState {
    return this.current;
  }
  get pid(): number | undefined {
    return this.child?.pid;
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
    const args = this.qemuArgs(launch);
    const bin = this.opts.qemuBinary ?? "qemu-system-x86_64";
    this.log.info("starting qemu", { accel: this.accel, args: args.join(" ") });
    const out = openSync(this.paths.qemuLog, "a");
    const child = spawn(bin, args, { stdio: ["ignore", out, out] });
    closeSync(out);
    this.child = child;
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
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
      this.qmpClient = qmp;
      qmp.on("event", (e) => {
        // A destination resumes by itself once post-copy (or the whole migration) hands over.
        if (e.event === "RESUME" && this.current === "incoming") this.transition("migrated-in");
      });
      const serial = new SerialConsole(this.paths.serialSocket);
      await serial.open(timeoutMs);
      this.serialConsole = serial;
      this.transition(launch.incoming ? "up-incoming" : launch.paused ? "up-paused" : "up-running");
    } catch (err) {
      await this.kill();
      throw err;
    }
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

  /** SIGKILL, waits for the exit. */
  async kill(): Promise<void> {
    const c = this.child;
    if (c && c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
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

function sleepMs(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}
