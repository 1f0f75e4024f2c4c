// Structured logs: one JSON object per line on stderr (stdout stays free for command
// output). Level from VMHOP_LOG_LEVEL (debug|info|warn|error), default info.
export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFields = Record<string, unknown>;

const rank: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  child(fields: LogFields): Logger;
}

export type LogSink = (line: string) => void;

function levelFromEnv(): LogLevel {
  const v = process.env.VMHOP_LOG_LEVEL;
  return v === "debug" || v === "info" || v === "warn" || v === "error" ? v : "info";
}

function serialise(value: unknown): unknown {
  if (value instanceof Error)
    return { message: value.message, name: value.name, code: (value as { code?: unknown }).code };
  if (typeof value === "bigint") return value.toString();
  return value;
}

export function createLogger(base: LogFields = {}, opts: { level?: LogLevel; sink?: LogSink } = {}): Logger {
  const level = opts.level ?? levelFromEnv();
  const sink = opts.sink ?? ((line: string) => process.stderr.write(line + "\n"));
  const emit = (lvl: LogLevel, msg: string, fields?: LogFields) => {
    if (rank[lvl] < rank[level]) return;
    const rec: LogFields = { time: new Date().toISOString(), level: lvl, msg, ...base };
    if (fields) for (const [k, v] of Object.entries(fields)) rec[k] = serialise(v);
    sink(JSON.stringify(rec));
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (fields) => createLogger({ ...base, ...fields }, { level, sink }),
  };
}

/** A logger that drops everything, for tests and library use. */
export const silentLogger: Logger = createLogger({}, { sink: () => {} });
