// Fetch worker threads, kept between proxy connections (see fetch-worker.ts): a fetcher
// takes a thread, attaches its connection as a new session, and the thread comes back here
// once the worker says the session is detached. Idle threads do not keep the process alive
// and end after a while unused.
import type { MessagePort, Worker } from "node:worker_threads";
import { MessageChannel } from "node:worker_threads";
import { startWorker } from "../../common/worker/start.js";
import { closeFd, eventFd, wakeEventFd } from "../export/libc.js";
import type { FetchCommand, FetchResult, FetchWorkerData } from "./fetch-worker.js";

/** An idle thread ends after this long unused (a new export then starts one again). */
export const IDLE_THREAD_MS = 60_000;

/** What a session's owner hears: its own results, and the thread's death. */
export interface SessionListener {
  result(m: FetchResult): void;
  died(err: Error): void;
}

let nextSession = 1;

export class FetchThread {
  private listener: { session: number; l: SessionListener } | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  private deadWith: Error | undefined;

  constructor(
    private readonly worker: Worker,
    private readonly port: MessagePort,
    private readonly wakeFd: number,
    private readonly sleeping: Int32Array,
    private readonly pool: FetchThreadPool,
  ) {
    port.on("message", (m: FetchResult) => {
      const cur = this.listener;
      if (!cur || m.session !== cur.session) return; // a session that is over
      if ("detached" in m) {
        this.listener = undefined;
        this.pool.release(this);
      }
      cur.l.result(m);
    });
    worker.on("error", (e) => this.die(new Error(`fetch worker failed: ${e.message}`)));
    worker.on("exit", () => this.die(new Error("fetch worker ended")));
  }

  get dead(): boolean {
    return this.deadWith !== undefined;
  }

  /** Starts a session on this thread; the worker owns `sockFd` from here. Returns its number. */
  attach(sockFd: number, cachePath: string, l: SessionListener): number {
    const session = nextSession++;
    this.listener = { session, l };
    this.post({ op: "attach", session, sockFd, cachePath });
    return session;
  }

  post(c: FetchCommand): void {
    if (this.deadWith) return;
    this.port.postMessage(c);
    // A busy worker finds the command when it next looks; only a sleeping one needs the
    // wake (a syscall, and on a VM an interrupt to another CPU, saved per fetch otherwise).
    if (Atomics.load(this.sleeping, 0) === 1) wakeEventFd(this.wakeFd);
  }

  /** Idle: no longer holds the process open, and ends after IDLE_THREAD_MS. */
  park(onExpire: () => void): void {
    this.worker.unref();
    this.port.unref();
    this.idleTimer = setTimeout(onExpire, IDLE_THREAD_MS);
    this.idleTimer.unref();
  }

  unpark(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    this.worker.ref();
    this.port.ref();
  }

  /** Asks an idle thread to end (it looks at its port at least every quarter second). */
  exit(): void {
    this.post({ op: "exit" });
  }

  private die(err: Error): void {
    if (this.deadWith) return;
    this.deadWith = err;
    clearTimeout(this.idleTimer);
    this.port.close();
    closeFd(this.wakeFd);
    this.pool.forget(this);
    const cur = this.listener;
    this.listener = undefined;
    cur?.l.died(err);
  }
}

export class FetchThreadPool {
  private readonly idle: FetchThread[] = [];

  /** An idle thread, or a new one. */
  take(): FetchThread {
    const t = this.idle.pop();
    if (t) {
      t.unpark();
      return t;
    }
    const wakeFd = eventFd();
    try {
      const { port1, port2 } = new MessageChannel();
      const sleeping = new Int32Array(new SharedArrayBuffer(4));
      const data: FetchWorkerData = { wakeFd, sleeping, port: port2 };
      const worker = startWorker(new URL("./fetch-worker.ts", import.meta.url), data, "vmhop-fetch", [port2]);
      return new FetchThread(worker, port1, wakeFd, sleeping, this);
    } catch (e) {
      closeFd(wakeFd);
      throw e;
    }
  }

  /** A thread whose session detached. */
  release(t: FetchThread): void {
    if (t.dead) return;
    this.idle.push(t);
    t.park(() => {
      this.forget(t);
      t.exit();
    });
  }

  forget(t: FetchThread): void {
    const i = this.idle.indexOf(t);
    if (i >= 0) this.idle.splice(i, 1);
  }

  get idleCount(): number {
    return this.idle.length;
  }
}

/** The process's fetch threads. */
export const fetchThreads = new FetchThreadPool();
