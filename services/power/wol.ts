// The `wol` power driver: wakes a host with a Wake-on-LAN magic packet (6 × 0xFF, then the MAC
// 16 times) as a UDP broadcast (default 255.255.255.255:9); WoL cannot shut down, so `off` runs
// the user's off_command (e.g. `ssh HOST systemctl poweroff`), and status its status_command
// (last word `on`/`off`; without one status is `unknown`).
import { createSocket } from "node:dgram";
import { isIPv4 } from "node:net";
import { type PowerDriver, PowerError, type PowerState, parseState } from "./driver.js";
import { runShell } from "./run.js";

const MAC = /^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$/i;

/** The magic packet for a MAC (aa:bb:cc:dd:ee:ff or aa-bb-…): 102 bytes. */
export function magicPacket(mac: string): Buffer {
  if (!MAC.test(mac))
    throw new PowerError("invalid", `wol mac must be aa:bb:cc:dd:ee:ff, got ${JSON.stringify(mac)}`);
  const m = Buffer.from(mac.replace(/[:-]/g, ""), "hex");
  return Buffer.concat([Buffer.alloc(6, 0xff), ...Array.from({ length: 16 }, () => m)]);
}

/** Sends one magic packet to address:port (broadcast allowed). */
export function sendMagicPacket(mac: string, address = "255.255.255.255", port = 9): Promise<void> {
  const packet = magicPacket(mac);
  if (!isIPv4(address))
    throw new PowerError("invalid", `wol broadcast must be an IPv4 address, got ${JSON.stringify(address)}`);
  return new Promise((resolve, reject) => {
    const sock = createSocket("udp4");
    const done = (err?: Error | null) => {
      sock.close();
      if (err) reject(new PowerError("unavailable", `wol packet to ${address}:${port}: ${err.message}`));
      else resolve();
    };
    sock.once("error", done);
    sock.bind(0, () => {
      sock.setBroadcast(true);
      sock.send(packet, port, address, done);
    });
  });
}

export class WolDriver implements PowerDriver {
  readonly reportsStatus: boolean;

  constructor(private readonly params: Record<string, string>) {
    magicPacket(params.mac); // a bad MAC is refused when the host is registered
    const port = Number(params.port || 9);
    if (!Number.isInteger(port) || port < 1 || port > 65535)
      throw new PowerError("invalid", `wol port must be 1-65535, got ${JSON.stringify(params.port)}`);
    this.reportsStatus = !!params.status_command;
  }

  on(): Promise<void> {
    return sendMagicPacket(
      this.params.mac,
      this.params.broadcast || undefined,
      Number(this.params.port || 9),
    );
  }

  async off(): Promise<void> {
    if (!this.params.off_command)
      throw new PowerError("unimplemented", "wol cannot switch a host off: give the driver an off_command");
    await runShell(this.params.off_command);
  }

  async status(): Promise<PowerState> {
    return this.params.status_command ? parseState(await runShell(this.params.status_command)) : "unknown";
  }
}
