// The NBD server: listeners, handshake state machine, transmission phase.
export { type ConnectionLimits, DEFAULT_LIMITS, readPaths } from "./connection.js";
export {
  BASE_ALLOCATION_ID,
  type ExportLookup,
  Handshake,
  type HandshakeState,
  type Negotiated,
} from "./handshake.js";
export {
  formatAddress,
  type ListenAddress,
  NbdServer,
  type NbdServerOptions,
  parseListenAddress,
} from "./server.js";
