// A unix socket path left behind by a process that was killed (kill -9 does not unlink it):
// binding there fails with EADDRINUSE, so a restarted service (the `vmhop up` supervisor's, a
// page-server after a crash) could never listen again. Removed when nothing answers on it; a
// path someone still serves is refused with a clear message instead.
import { lstatSync, unlinkSync } from "node:fs";
import { connect } from "node:net";

export class SocketInUseError extends Error {
  constructor(readonly path: string) {
    super(`unix:${path} is in use: another process serves it (stop that one, or choose another path)`);
    this.name = "SocketInUseError";
  }
}

/** Makes `path` free to bind: a stale socket is unlinked; a live one throws SocketInUseError. */
export async function clearStaleSocket(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return; // nothing there
  }
  if (!isSocket) return; // a regular file: the bind's own error names it
  const live = await new Promise<boolean>((resolve) => {
    const s = connect(path);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
  if (live) throw new SocketInUseError(path);
  try {
    unlinkSync(path);
  } catch {
    // gone meanwhile: fine
  }
}
