// The `ipmi` power driver: `ipmitool -I lanplus -H ADDRESS -U USER -E chassis power soft|on|status`.
// The password reaches ipmitool in IPMI_PASSWORD (-E), never on its command line (ps shows that).
import { type PowerDriver, PowerError, type PowerState, parseState } from "./driver.js";
import { runCommand } from "./run.js";

export class IpmiDriver implements PowerDriver {
  readonly reportsStatus = true;

  constructor(
    private readonly params: Record<string, string>,
    private readonly password: string,
  ) {}

  private power(verb: "soft" | "on" | "status"): Promise<string> {
    const p = this.params;
    const argv = ["ipmitool", "-I", p.interface || "lanplus", "-H", p.address];
    if (p.port) argv.push("-p", p.port);
    if (p.username) argv.push("-U", p.username);
    argv.push("-E", "chassis", "power", verb);
    return runCommand(argv, {
      env: { IPMI_PASSWORD: this.password },
      secret: this.password,
      label: `ipmitool chassis power ${verb} (${p.address})`,
    });
  }

  async on(): Promise<void> {
    await this.power("on");
  }

  async off(): Promise<void> {
    await this.power("soft");
  }

  async status(): Promise<PowerState> {
    const out = await this.power("status");
    const s = parseState(out);
    if (s === "unknown")
      throw new PowerError(
        "unknown",
        `ipmitool chassis power status (${this.params.address}): unexpected answer ${JSON.stringify(out.trim().slice(0, 200))}`,
      );
    return s;
  }
}
