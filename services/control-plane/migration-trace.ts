// One trace per migration: a root span for the whole migration (started when MigrateVm accepts
// it), a child span per phase (each state of states.ts, entered when the executor records it)
// and per network step, and the peer calls made in a phase running in its span, so the
// page-servers', block-servers' and netreach's server spans are the phase's children. The
// migration span's W3C traceparent is kept in the migration record: a control-plane that
// resumes the migration after a restart continues the same trace, with a new migration span
// (a child of the first). Attributes are listed in docs/TRACING.md.
import {
  type Attributes,
  type Context,
  context,
  isSpanContextValid,
  type Link,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanStatusCode,
  trace,
} from "@opentelemetry/api";
import { StorageMode } from "../../gen/vmhop/v1/control.js";
import { HandoverMode } from "../../gen/vmhop/v1/netreach.js";
import { MigrationMode } from "../../gen/vmhop/v1/page.js";
import { inSpan, recordError, vmhopTracer } from "../common/tracing.js";
import type { MigrationRecord } from "./records.js";
import { isFinal, type MigrationState } from "./states.js";

export const ATTR = {
  vm: "vmhop.vm.id",
  host: "vmhop.host.id",
  migration: "vmhop.migration.id",
  from: "vmhop.migration.from_host",
  to: "vmhop.migration.to_host",
  mode: "vmhop.migration.mode",
  storage: "vmhop.migration.storage",
  handover: "vmhop.migration.handover",
  state: "vmhop.migration.state",
  resumed: "vmhop.migration.resumed",
  phase: "vmhop.migration.phase",
} as const;

/** An enum value's name without its prefix, lower case: STORAGE_MODE_LAZY → "lazy". */
function enumName(e: Record<number, string>, v: number | undefined, prefix: string): string {
  const name = v === undefined ? undefined : e[v];
  return name ? name.slice(prefix.length).toLowerCase() : "unspecified";
}

/** What the migration's spans say about it. */
export function migrationAttributes(m: MigrationRecord): Attributes {
  return {
    [ATTR.vm]: m.vm_id,
    [ATTR.migration]: m.migration_id,
    [ATTR.from]: m.source_host_id,
    [ATTR.to]: m.destination_host_id,
    [ATTR.mode]: enumName(MigrationMode, m.mode, "MIGRATION_MODE_"),
    // Records from before storage modes are SHARED.
    [ATTR.storage]: enumName(StorageMode, m.storage ?? StorageMode.STORAGE_MODE_SHARED, "STORAGE_MODE_"),
    // No network part: the VM's address does not move (no netreach or no home addresses);
    // unspecified: the anchor's default mode.
    [ATTR.handover]: !m.network
      ? "none"
      : m.network.mode
        ? enumName(HandoverMode, m.network.mode, "HANDOVER_MODE_")
        : "default",
  };
}

/** The W3C traceparent of a span's context ("" when tracing is off). */
function traceparentOf(span: Span): string {
  const carrier: Record<string, string> = {};
  propagation.inject(trace.setSpan(ROOT_CONTEXT, span), carrier);
  return carrier.traceparent ?? "";
}

export class MigrationTrace {
  private phase?: Span;
  private phaseState?: MigrationState;
  private ended = false;

  private constructor(
    readonly span: Span,
    private readonly migrationId: string,
  ) {}

  /**
   * MigrateVm accepted a migration: a new trace whose root is the migration's span, linked to
   * the request's span (the MigrateVm call) when there is one.
   */
  static start(m: MigrationRecord): MigrationTrace {
    const request = trace.getSpanContext(context.active());
    const links: Link[] = request && isSpanContextValid(request) ? [{ context: request }] : [];
    return new MigrationTrace(
      vmhopTracer().startSpan("migration", { root: true, attributes: migrationAttributes(m), links }),
      m.migration_id,
    );
  }

  /**
   * A control-plane drives a migration it did not start (after a restart): a new migration span
   * in the recorded trace, a child of the first one. An absent or unreadable traceparent starts
   * a new trace.
   */
  static resume(m: MigrationRecord): MigrationTrace {
    const parent = m.trace_parent
      ? propagation.extract(ROOT_CONTEXT, { traceparent: m.trace_parent })
      : ROOT_CONTEXT;
    const inTrace = trace.getSpanContext(parent) !== undefined;
    const span = vmhopTracer().startSpan(
      "migration",
      { root: !inTrace, attributes: { ...migrationAttributes(m), [ATTR.resumed]: true } },
      parent,
    );
    return new MigrationTrace(span, m.migration_id);
  }

  /** The trace's id (32 hex digits; all zeros when tracing is off): what to look up in Jaeger. */
  get traceId(): string {
    return this.span.spanContext().traceId;
  }

  /** What the migration record keeps (`trace_parent`). */
  get traceparent(): string {
    return traceparentOf(this.span);
  }

  /** The context calls of the current phase run in. */
  private get context(): Context {
    return trace.setSpan(ROOT_CONTEXT, this.phase ?? this.span);
  }

  /**
   * The migration is in `state` now: the previous phase's span ends and the state's begins
   * (a final state opens none; end() follows).
   */
  enter(state: MigrationState): void {
    if (this.ended || state === this.phaseState) return;
    this.phase?.end();
    this.phase = undefined;
    this.phaseState = state;
    if (isFinal(state)) return;
    this.phase = vmhopTracer().startSpan(
      state,
      { attributes: { [ATTR.migration]: this.migrationId, [ATTR.phase]: state } },
      trace.setSpan(ROOT_CONTEXT, this.span),
    );
  }

  /** Runs `fn` in the current phase's span: the peer calls it makes are that span's children. */
  within<T>(fn: () => T): T {
    return context.with(this.context, fn);
  }

  /** A step with a span of its own under the migration's (the address moving: network …). */
  step<T>(name: string, fn: () => Promise<T>): Promise<T> {
    return inSpan(name, { [ATTR.migration]: this.migrationId }, fn, trace.setSpan(ROOT_CONTEXT, this.span));
  }

  /** Records what went wrong on the current phase's span. */
  error(err: unknown): void {
    if (this.phase) recordError(this.phase, err);
  }

  /**
   * The driver stops: the migration span ends with the state it reached (a shutdown leaves an
   * unfinished one, which the next control-plane resumes); failed or cancelled mark it ERROR.
   */
  end(state: MigrationState, error = ""): void {
    if (this.ended) return;
    this.phase?.end();
    this.ended = true;
    this.span.setAttribute(ATTR.state, state);
    if (state === "failed" || state === "cancelled")
      this.span.setStatus({ code: SpanStatusCode.ERROR, message: error || state });
    this.span.end();
  }
}
