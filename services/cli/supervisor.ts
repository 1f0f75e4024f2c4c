// Keeps a set of child processes running: one that ends on its own is logged and started again
// after a back-off (doubling from `initialMs` to `maxMs`, back to `initialMs` once it had stayed
// up `resetAfterMs`); the others are left alone, so the death of one service never stops the
// rest (the data plane keeps serving its VMs). stop() ends them all and restarts nothing.
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";

export interface Supervised {
  name: string;
  command: string;
  args: string[];
}

export interface Backoff {
  initialMs: number;
  maxMs: number;
  /** Up this long, a crash counts as the first again. */
  resetAfterMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 500, maxMs: 30_000, resetAfterMs: 60_000 };

/** Pure: the wait before the next start, from the previous wait (0: none yet) and how long it stayed up. */
export function nextDelay(previousMs: number, upMs: number, b: Backoff = DEFAULT_BACKOFF): number {
  if (previousMs === 0 || upMs >= b.resetAfterMs) return b.initialMs;
  return Math.min(previousMs * 2, b.maxMs);
}

/** "0.5 s", "0.02 s", "30 s". */
function seconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(2))} s`;
}

export interface SupervisorOptions {
  env?: NodeJS.ProcessEnv;
  backoff?: Backoff;
  /** The supervisor's own lines (one per exit and restart). */
  log?: (line: string) => void;
  /** A child's stdout/stderr lines. */
  output?: (name: string, stream: "stdout" | "stderr", line: string) => void;
}

interface Slot {
  spec: Supervised;
  proc?: ChildProcess;
  startedAt: number;
  delayMs: number;
  restarts: number;
  timer?: NodeJS.Timeout;
  exited?: Promise<void>;
  lastExit?: number | null;
}

export class Supervisor {
  private readonly slots: Slot[];
  private stopping = false;
  private readonly backoff: Backoff;
  private readonly log: (line: string) => void;

  constructor(
    services: Supervised[],
    private readonly opts: SupervisorOptions = {},
  ) {
    this.slots = services.map((spec) => ({ spec, startedAt: 0, delayMs: 0, restarts: 0 }));
    this.backoff = opts.backoff ?? DEFAULT_BACKOFF;
    this.log = opts.log ?? ((l) => console.error(l));
  }

  /** Starts every service. */
  start(): void {
    for (const s of this.slots) this.spawn(s);
  }

  /** The running process of a service (undefined while it waits to be started again). */
  pid(name: string): number | undefined {
    const s = this.slot(name);
    return s.proc && s.proc.exitCode === null && s.proc.signalCode === null ? s.proc.pid : undefined;
  }

  /** How often the service was started again. */
  restarts(name: string): number {
    return this.slot(name).restarts;
  }

  /**
   * Signals every running service, restarts nothing, resolves once all have ended: 0 when each
   * ended cleanly (exit 0, or by the signal sent), else 1 (also when one was waiting to be
   * started again).
   */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<number> {
    this.stopping = true;
    for (const s of this.slots) {
      clearTimeout(s.timer);
      if (s.proc && s.proc.exitCode === null && s.proc.signalCode === null) s.proc.kill(signal);
    }
    await Promise.all(this.slots.map((s) => s.exited));
    return this.slots.every((s) => s.lastExit === 0 || s.lastExit === null) ? 0 : 1;
  }

  private slot(name: string): Slot {
    const s = this.slots.find((x) => x.spec.name === name);
    if (!s) throw new Error(`no service ${name}`);
    return s;
  }

  private spawn(s: Slot): void {
    // Own process group: a Ctrl-C at the terminal reaches the supervisor only, which stops
    // every service itself (else a service could end before stop() and be restarted).
    const proc = spawn(s.spec.command, s.spec.args, {
      env: this.opts.env,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    s.proc = proc;
    s.startedAt = Date.now();
    const out =
      this.opts.output ?? ((n, st, l) => (st === "stdout" ? console.log : console.error)(`[${n}] ${l}`));
    createInterface({ input: proc.stdout! }).on("line", (l) => out(s.spec.name, "stdout", l));
    createInterface({ input: proc.stderr! }).on("line", (l) => out(s.spec.name, "stderr", l));
    s.exited = new Promise((resolve) => {
      const done = (code: number | null, signal: NodeJS.Signals | null, err?: Error) => {
        // null: ended by a signal we sent while stopping (clean); an error or signal otherwise.
        s.lastExit = this.stopping && signal ? null : (code ?? 1);
        if (!this.stopping)
          this.restartLater(s, err ? `could not start: ${err.message}` : (signal ?? `code ${code}`));
        resolve();
      };
      proc.once("exit", (code, signal) => done(code, signal));
      proc.once("error", (err) => {
        // A spawn failure emits no exit.
        if (proc.pid === undefined) done(null, null, err);
      });
    });
  }

  private restartLater(s: Slot, how: string): void {
    s.delayMs = nextDelay(s.delayMs, Date.now() - s.startedAt, this.backoff);
    this.log(`[up] ${s.spec.name} exited (${how}); restarting it in ${seconds(s.delayMs)}`);
    s.timer = setTimeout(() => {
      if (this.stopping) return;
      s.restarts++;
      this.spawn(s);
    }, s.delayMs);
  }
}
