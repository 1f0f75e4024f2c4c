// Drives a QEMU-to-QEMU migration over QMP: pre-copy, pure post-copy (switch at once) or
// hybrid (some pre-copy, then post-copy). The caller starts the destination with
// `incoming: true` and calls prepareIncoming before migrate.

import type { Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { ServiceError } from "../../common/errors.js";
import type { QmpEvent } from "../qmp/codec.js";
import { QmpError } from "../qmp/errors.js";
import { socketFd } from "../qmp/pass-fd.js";
import type { VmState } from "../vm/states.js";
import type { Vm } from "../vm/vm.js";
import { isFinal, type MigrationProgress, parseMigrationInfo } from "./status.js";

export type MigrationMode = "precopy" | "postcopy" | "hybrid";

export interface MigrationCaps {
  mode: MigrationMode;
  /** A separate channel for urgent post-copy page requests (both sides must agree). */
  preempt?: boolean;
}

export interface MigrationOptions extends MigrationCaps {
  /** Bytes/s; QEMU 7.2's default cap is 32 MiB/s, so it is always set. Default: effectively unlimited. */
  maxBandwidth?: number;
  downtimeLimitMs?: number;
  /** Hybrid: switch to post-copy after this many dirty-sync rounds or seconds, whichever first. */
  hybridRounds?: number;
  hybridSeconds?: number;
  pollMs?: number;
  timeoutMs?: number;
  onProgress?: (p: MigrationProgress) => void;
  /**
   * When post-copy pauses (the stream broke after the switch-over): get the destination
   * recovering and return the URI to resume on. Retried until recoverTimeoutMs.
   */
  recover?: () => Promise<string>;
  recoverTimeoutMs?: number;
  /**
   * Asks for the pages the destination will fault on first. Called as QEMU leaves set-up (its
   * MIGRATION event `active`: pages sent then arrive before the device state, unless the guest
   * dirties them before it stops), as a hybrid migration is switched, and again the moment QEMU
   * enters post-copy (`postcopy-active`: the VM is stopping, so what is asked for now follows
   * the device state closely and is final). Never before set-up ends (see migrate()).
   */
  sendAhead?: () => void;
}

export interface MigrationResult {
  final: MigrationProgress;
  /** Host time from `migrate` to completion. */
  wallMs: number;
  /** Host time from `migrate` to the switch to post-copy (undefined for pre-copy). */
  switchedAtMs?: number;
  /** Times a paused post-copy was resumed on a new stream. */
  recoveries: number;
}

export class MigrationError extends ServiceError {
  constructor(
    message: string,
    readonly progress?: MigrationProgress,
  ) {
    super("aborted", message);
    this.name = "MigrationError";
  }
}

// Read afresh: the state changes while we await (TypeScript would narrow a direct read).
const stateOf = (vm: Vm): VmState => vm.state;

// Effectively unlimited. Much larger values misbehave in QEMU 7.2: 2^50 left post-copy's
// background push at ~300 KB/s.
export const UNLIMITED = 1e12;
const RECOVER_SETTLE_MS = 2000;
/** Pure post-copy: the pre-copy trickle until migrate-start-postcopy lands (see migrate()). */
export const PRESWITCH_BANDWIDTH = 1 << 20;

function capabilities(c: MigrationCaps, destination: boolean) {
  const caps = [
    { capability: "postcopy-ram", state: c.mode !== "precopy" },
    { capability: "postcopy-preempt", state: c.mode !== "precopy" && !!c.preempt },
  ];
  if (destination) caps.push({ capability: "postcopy-blocktime", state: c.mode !== "precopy" });
  return caps;
}

/** Destination side: capabilities, then listen on `uri` (e.g. tcp:127.0.0.1:PORT or unix:PATH). */
export async function prepareIncoming(dst: Vm, uri: string, caps: MigrationCaps): Promise<void> {
  await setIncomingCapabilities(dst, caps);
  await listenIncoming(dst, uri);
}

/** Destination side, second half of prepareIncoming: QEMU waits for the stream on `uri`. */
export async function listenIncoming(dst: Vm, uri: string): Promise<void> {
  await dst.qmp.execute("migrate-incoming", { uri });
}

/** Destination side, first half of prepareIncoming: `migrate-incoming` may come later. */
export async function setIncomingCapabilities(dst: Vm, caps: MigrationCaps): Promise<void> {
  if (dst.state !== "incoming")
    throw new MigrationError(`destination ${dst.spec.name} is ${dst.state}, not incoming`);
  await dst.qmp.execute("migrate-set-capabilities", { capabilities: capabilities(caps, true) });
}

/**
 * Gives QEMU a connected socket (QMP `getfd`, the fd passed as SCM_RIGHTS) and returns the
 * URI naming it (`fd:NAME`) for `migrate` or `migrate-incoming`. QEMU holds its own copy
 * then: the caller destroys its socket (destroy closes only this process's fd; end() would
 * send a FIN on QEMU's stream).
 */
export async function handSocketToQemu(vm: Vm, name: string, sock: Socket): Promise<string> {
  await vm.qmp.execute("getfd", { fdname: name }, { fd: socketFd(sock) });
  return `fd:${name}`;
}

export async function queryMigration(vm: Vm): Promise<MigrationProgress> {
  return parseMigrationInfo(await vm.qmp.execute("query-migrate"));
}

/** How long a post-copy switch waits for QEMU to leave set-up before the pages are asked. */
const SET_UP_WAIT_MS = 1000;

/** Source side: migrates to `uri` and waits for the end. The source ends in postmigrate. */
export async function migrate(src: Vm, uri: string, opts: MigrationOptions): Promise<MigrationResult> {
  if (src.state !== "running" && src.state !== "paused")
    throw new MigrationError(`source ${src.spec.name} is ${src.state}, cannot migrate`);
  const qmp = src.qmp;
  const bw = opts.maxBandwidth ?? UNLIMITED;
  const caps = capabilities(opts, false);
  let stopListening = () => {};
  const ahead = opts.mode !== "precopy" ? opts.sendAhead : undefined;
  /** Settles once QEMU left set-up (or the migration ended): the pages may be asked for. */
  let setUp: Promise<void> | undefined;
  if (ahead) {
    // Asked as QEMU leaves set-up (`active`) and again as it enters post-copy, never sooner: a
    // page request on the return path before its RAM state exists crashes QEMU 7.2 (SIGSEGV
    // in ram_save_queue_pages; the destination itself never asks that early).
    caps.push({ capability: "events", state: true });
    let left = () => {};
    setUp = new Promise<void>((r) => {
      left = r;
    });
    const onEvent = (e: QmpEvent) => {
      const status = e.event === "MIGRATION" ? (e.data as { status?: string } | undefined)?.status : "";
      if (status === "failed" || status === "cancelled") left();
      if (status !== "active" && status !== "postcopy-active") return;
      if (status === "postcopy-active") stopListening();
      ahead();
      left();
    };
    qmp.on("event", onEvent);
    stopListening = () => qmp.off("event", onEvent);
  }
  // Pure post-copy: QEMU pre-copies at full speed until migrate-start-postcopy lands (MBs on
  // a WAN), all of it ahead of the device state. A trickle until the switch keeps the bytes
  // before resume small; from the switch on QEMU applies max-postcopy-bandwidth.
  const precopyBw = opts.mode === "postcopy" ? Math.min(bw, PRESWITCH_BANDWIDTH) : bw;
  const params: Record<string, unknown> = { "max-bandwidth": precopyBw, "max-postcopy-bandwidth": bw };
  if (opts.downtimeLimitMs !== undefined) params["downtime-limit"] = opts.downtimeLimitMs;
  // QMP runs a monitor's commands in order, so they go out together: each answer waited for
  // in turn cost a round trip to a busy QEMU on the switch-over's path.
  await Promise.all([
    qmp.execute("migrate-set-capabilities", { capabilities: caps }),
    qmp.execute("migrate-set-parameters", params),
  ]);

  try {
    const t0 = Date.now();
    let switchedAtMs: number | undefined;
    await qmp.execute("migrate", { uri });
    if (opts.mode === "postcopy") {
      // With pages to send ahead, the switch waits for them to be asked (QEMU out of set-up:
      // a few ms), so they leave before the device state; bounded, as QEMU may never say.
      if (setUp) await Promise.race([setUp, sleep(SET_UP_WAIT_MS, undefined, { ref: false })]);
      await qmp.execute("migrate-start-postcopy");
      switchedAtMs = Date.now() - t0;
    }
    return await followMigration(src, opts, { t0, switchedAtMs });
  } finally {
    stopListening();
  }
}

/**
 * Watches an outgoing migration until it ends: the hybrid switch, post-copy recovery, the
 * deadline. Also picks up a migration QEMU was already sending (page-server restart).
 */
export async function followMigration(
  src: Vm,
  opts: MigrationOptions,
  started: { t0: number; switchedAtMs?: number } = { t0: Date.now() },
): Promise<MigrationResult> {
  const qmp = src.qmp;
  const t0 = started.t0;
  let switchedAtMs = started.switchedAtMs;
  const switchToPostcopy = async () => {
    await qmp.execute("migrate-start-postcopy");
    switchedAtMs = Date.now() - t0;
    opts.sendAhead?.();
  };
  const pollMs = opts.pollMs ?? 50;
  let recoveries = 0;
  let pausedSince: number | undefined;
  let lastRecoverAt = 0;
  let recoverError: string | undefined;
  const deadline = t0 + (opts.timeoutMs ?? 120_000);
  for (;;) {
    const p = await queryMigration(src);
    opts.onProgress?.(p);
    // The VM must never run on two hosts: from post-copy on, the source's vCPUs are stopped.
    if ((p.status === "postcopy-active" || p.status === "completed") && stateOf(src) !== "postmigrate")
      src.transition("migrated-out");
    if (p.status === "postcopy-paused") {
      pausedSince ??= Date.now();
      const stranded =
        "post-copy paused: the migration stream broke after the switch-over; the VM is stopped at the source " +
        "and waiting at the destination until the stream is recovered";
      if (!opts.recover) throw new MigrationError(stranded, p);
      if (Date.now() - pausedSince > (opts.recoverTimeoutMs ?? 60_000))
        throw new MigrationError(
          `${stranded}; recovery failed: ${recoverError ?? "no attempt succeeded"}`,
          p,
        );
      // A resume takes a moment to leave "postcopy-paused": don't start a second one meanwhile.
      if (Date.now() - lastRecoverAt > RECOVER_SETTLE_MS) {
        lastRecoverAt = Date.now();
        try {
          const resumeUri = await opts.recover();
          await qmp.execute("migrate", { uri: resumeUri, resume: true });
          recoveries++;
        } catch (err) {
          recoverError = (err as Error).message;
        }
      }
    } else if (p.status !== "postcopy-recover") pausedSince = undefined;
    if (p.status === "failed" || p.status === "cancelled")
      throw new MigrationError(`migration ${p.status}${p.errorDesc ? `: ${p.errorDesc}` : ""}`, p);
    if (isFinal(p.status)) return { final: p, wallMs: Date.now() - t0, switchedAtMs, recoveries };
    if (
      opts.mode === "hybrid" &&
      switchedAtMs === undefined &&
      p.status === "active" &&
      (p.dirtySyncCount >= (opts.hybridRounds ?? Number.POSITIVE_INFINITY) ||
        Date.now() - t0 >= (opts.hybridSeconds ?? Number.POSITIVE_INFINITY) * 1000)
    )
      await switchToPostcopy();
    if (Date.now() > deadline) {
      await qmp.execute("migrate_cancel").catch(() => {});
      throw new MigrationError(
        `migration did not finish within ${opts.timeoutMs ?? 120_000} ms (status ${p.status})`,
        p,
      );
    }
    await sleep(pollMs);
  }
}

/**
 * Destination: puts a paused post-copy into recovery, listening on `uri`. Out-of-band, since
 * the main loop may be blocked on a missing page; retried while QEMU has not yet noticed the
 * break itself.
 */
export async function recoverIncoming(dst: Vm, uri: string, waitMs = 5000): Promise<void> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      await dst.qmp.execute("migrate-recover", { uri }, { oob: true, timeoutMs: 5000 });
      return;
    } catch (err) {
      if (!(err instanceof QmpError) || !/paused/.test(err.desc) || Date.now() > deadline) throw err;
      await sleep(100);
    }
  }
}
