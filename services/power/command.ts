// The `command` power driver: the user's own shell commands for on, off and (optionally) status.
// status prints `on` or `off` as its last word; anything else is `unknown`. The host's password,
// if the credentials have one, is in VMHOP_POWER_PASSWORD (never on the command line).
import { type PowerDriver, type PowerState, parseState } from "./driver.js";
import { runShell } from "./run.js";

export class CommandDriver implements PowerDriver {
  readonly reportsStatus: boolean;

  constructor(
    private readonly params: Record<string, string>,
    private readonly password: string | undefined,
  ) {
    this.reportsStatus = !!params.status;
  }

  private run(command: string): Promise<string> {
    return runShell(command, {
      env: this.password ? { VMHOP_POWER_PASSWORD: this.password } : {},
      secret: this.password,
    });
  }

  async on(): Promise<void> {
    await this.run(this.params.on);
  }

  async off(): Promise<void> {
    await this.run(this.params.off);
  }

  async status(): Promise<PowerState> {
    return this.params.status ? parseState(await this.run(this.params.status)) : "unknown";
  }
}
