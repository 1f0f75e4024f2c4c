// Protocol errors and NBD error-number mapping.

/** Bytes on the wire that break the protocol. Decoders throw only this. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

/** NBD error values (they match Linux errno numbers, but the spec fixes them). */
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

const byName: Record<string, number> = {
  EPERM: NBD_EPERM,
  EACCES: NBD_EPERM,
  EROFS: NBD_EPERM,
  EIO: NBD_EIO,
  ENOMEM: NBD_ENOMEM,
  EINVAL: NBD_EINVAL,
  ENOSPC: NBD_ENOSPC,
  EDQUOT: NBD_ENOSPC,
  EFBIG: NBD_ENOSPC,
  EOVERFLOW: NBD_EOVERFLOW,
  ENOTSUP: NBD_ENOTSUP,
  EOPNOTSUPP: NBD_ENOTSUP,
  ESHUTDOWN: NBD_ESHUTDOWN,
};

const names: Record<number, string> = {
  [NBD_EPERM]: "EPERM",
  [NBD_EIO]: "EIO",
  [NBD_ENOMEM]: "ENOMEM",
  [NBD_EINVAL]: "EINVAL",
  [NBD_ENOSPC]: "ENOSPC",
  [NBD_EOVERFLOW]: "EOVERFLOW",
  [NBD_ENOTSUP]: "ENOTSUP",
  [NBD_ESHUTDOWN]: "ESHUTDOWN",
};

/** Maps an errno name (e.g. from a Node system error's `code`) to an NBD error value; unknown -> EIO. */
export function nbdErrno(name: string | undefined): number {
  return (name !== undefined && byName[name]) || NBD_EIO;
}

/** Maps any thrown value to an NBD error value: BackendError.errno or Node `code`, else EIO. */
export function nbdErrnoOf(err: unknown): number {
  if (err && typeof err === "object") {
    const e = err as { errno?: unknown; code?: unknown };
    if (typeof e.errno === "string") return nbdErrno(e.errno);
    if (typeof e.code === "string") return nbdErrno(e.code);
  }
  return NBD_EIO;
}

/** Name of an NBD error value (for messages); unknown values print as a number. */
export function nbdErrorName(value: number): string {
  return names[value] ?? `error ${value}`;
}
