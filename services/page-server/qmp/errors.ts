// Typed failures of a QMP conversation.

/** QEMU answered the command with an error (class as QEMU names it, e.g. CommandNotFound). */
export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
    this.name = "QmpError";
  }
}

export class QmpTimeoutError extends Error {
  constructor(
    readonly command: string,
    readonly timeoutMs: number,
  ) {
    super(`QMP ${command}: no reply within ${timeoutMs} ms`);
    this.name = "QmpTimeoutError";
  }
}

/** The connection ended (QEMU quit or died) before the reply came. */
export class QmpClosedError extends Error {
  constructor(
    readonly command: string | undefined,
    reason: string,
  ) {
    super(command ? `QMP ${command}: connection closed (${reason})` : `QMP connection closed (${reason})`);
    this.name = "QmpClosedError";
  }
}

export class QmpConnectError extends Error {
  constructor(
    readonly path: string,
    reason: string,
  ) {
    super(`cannot connect to QMP socket ${path}: ${reason}`);
    this.name = "QmpConnectError";
  }
}
