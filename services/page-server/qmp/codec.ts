// QMP framing: JSON objects, one per line (QEMU ends each with CRLF). Pure functions over
// bytes; the client owns the socket.
import { splitLines } from "../lines.js";

export { splitLines };

export interface QmpGreeting {
  kind: "greeting";
  version: { qemu: { major: number; minor: number; micro: number }; package?: string };
  capabilities: string[];
}
export interface QmpReturn {
  kind: "return";
  id?: string;
  value: unknown;
}
export interface QmpErrorReply {
  kind: "error";
  id?: string;
  errorClass: string;
  desc: string;
}
export interface QmpEvent {
  kind: "event";
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}
export type QmpMessage = QmpGreeting | QmpReturn | QmpErrorReply | QmpEvent;

export class QmpProtocolError extends Error {
  constructor(
    message: string,
    readonly line?: string,
  ) {
    super(message);
    this.name = "QmpProtocolError";
  }
}

/**
 * The bytes of one command. `id` ties the reply to it. `oob` runs it out-of-band, ahead of
 * queued commands and even while the main loop is blocked (e.g. migrate-recover while a
 * post-copy destination waits on a missing page).
 */
export function encodeCommand(
  execute: string,
  args: Record<string, unknown> | undefined,
  id: string,
  oob = false,
): Buffer {
  const msg: Record<string, unknown> = oob ? { "exec-oob": execute } : { execute };
  if (args !== undefined) msg.arguments = args;
  msg.id = id;
  return Buffer.from(`${JSON.stringify(msg)}\n`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** One line to a typed message; throws QmpProtocolError on bad JSON or an unknown shape. */
export function parseMessage(line: string): QmpMessage {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch (err) {
    throw new QmpProtocolError(`bad JSON from QMP: ${(err as Error).message}`, line);
  }
  if (!isObject(v)) throw new QmpProtocolError("QMP message is not a JSON object", line);
  const id = typeof v.id === "string" ? v.id : v.id === undefined ? undefined : JSON.stringify(v.id);
  if (isObject(v.QMP)) {
    const q = v.QMP;
    return {
      kind: "greeting",
      version: q.version as QmpGreeting["version"],
      capabilities: Array.isArray(q.capabilities) ? (q.capabilities as string[]) : [],
    };
  }
  if ("return" in v) return { kind: "return", id, value: v.return };
  if (isObject(v.error)) {
    return {
      kind: "error",
      id,
      errorClass: String(v.error.class ?? "GenericError"),
      desc: String(v.error.desc ?? ""),
    };
  }
  if (typeof v.event === "string") {
    return {
      kind: "event",
      event: v.event,
      data: isObject(v.data) ? v.data : {},
      timestamp: (v.timestamp as QmpEvent["timestamp"]) ?? { seconds: 0, microseconds: 0 },
    };
  }
  throw new QmpProtocolError("QMP message is neither greeting, return, error nor event", line);
}

/** Feeds a chunk: the complete messages, the tail to keep, and lines that failed to parse. */
export function decodeChunk(
  pending: Buffer,
  chunk: Buffer,
): { messages: QmpMessage[]; rest: Buffer; errors: QmpProtocolError[] } {
  const { lines, rest } = splitLines(pending.length ? Buffer.concat([pending, chunk]) : chunk);
  const messages: QmpMessage[] = [];
  const errors: QmpProtocolError[] = [];
  for (const l of lines) {
    try {
      messages.push(parseMessage(l));
    } catch (err) {
      errors.push(err as QmpProtocolError);
    }
  }
  return { messages, rest, errors };
}
