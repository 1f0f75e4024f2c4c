// A connected net.Socket's file descriptor, for what Node's net module cannot do: sendfile(2)
// and socket options on the server side, handing a connection to the proxy's fetch thread on
// the client side. Node has no public API for it (net.Socket exposes no fd; only the private
// `_handle.fd` of its TCP or Pipe handle has it), so this is the one place that reads it, and
// it fails loudly if a Node release changes that, rather than silently serving without it.
import type { Socket } from "node:net";
import { dup } from "../export/libc.js";

/** Thrown when a socket's descriptor cannot be found (Node changed, or the socket is not open). */
export class SocketFdError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SocketFdError";
  }
}

/**
 * The descriptor Node's handle holds. Node closes it as soon as the socket is destroyed and
 * the number is then reused by the next open(): use it only synchronously while the socket is
 * known to be open, or take `dupSocketFd` to hold one of your own.
 */
export function socketFd(socket: Socket): number {
  if (socket.destroyed) throw new SocketFdError("socket is already closed: it has no descriptor");
  const handle = (socket as unknown as { _handle?: unknown })._handle;
  if (handle === null || typeof handle !== "object")
    throw new SocketFdError("socket has no native handle (not connected?): cannot find its descriptor");
  const fd = (handle as { fd?: unknown }).fd;
  if (typeof fd !== "number" || !Number.isInteger(fd) || fd < 0)
    throw new SocketFdError(
      `this Node (${process.version}) does not expose a socket's descriptor as _handle.fd (got ${String(fd)}): ` +
        "services/block-server/nbd/socket-fd.ts must be updated",
    );
  return fd;
}

/**
 * A close-on-exec duplicate of the socket's descriptor, the caller's to close. Its number
 * cannot be reused while the caller holds it, so nothing written through it can land in
 * another client's connection or a file. It also keeps the connection itself open after Node
 * closes its descriptor: close it as soon as the socket is done.
 */
export function dupSocketFd(socket: Socket): number {
  return dup(socketFd(socket));
}
