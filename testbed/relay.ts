// The WAN link emulator's public API: a TCP/unix stream relay and a UDP datagram relay that
// add a one-way delay each way and cap the rate (netem is absent in this kernel).
export { type Endpoint, formatEndpoint, parseEndpoint } from "./address.js";
export { Link, type LinkParams } from "./link.js";
export { type Relay, type RelayOptions, type RelayStats, startRelay } from "./relay-tcp.js";
export { startUdpRelay, type UdpRelay, type UdpRelayOptions, type UdpRelayStats } from "./relay-udp.js";
