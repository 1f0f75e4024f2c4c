// The NBD server: listeners, handshake state machine, transmission phase.
export { type ConnectionLimits, DEFAULT_LIMITS } from "./connection.js";
export {
  BASE_ALLOCATION_ID,
  type ExportLookup,
  Handshake,
  type HandshakeState,
  type Negotiated,
} from "./handshake.js";
export {
  DEFAULT_MAX_CONNECTIONS,
  formatAddress,
  type ListenAddress,
  NbdServer,
  type NbdServerOptions,
  parseListenAddress,
  type ServerLimits,
} from "./server.js";
