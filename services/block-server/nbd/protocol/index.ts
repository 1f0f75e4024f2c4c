// The NBD codec: constants and pure functions over Buffers for both directions.
export * from "./constants.js";
export * from "./decoded.js";
export * from "./errors.js";
export * from "./handshake.js";
export * from "./transmission.js";
