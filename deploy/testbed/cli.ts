import { CliError } from "../../services/cli/errors.js";

export async function run(_argv: string[]): Promise<number> {
  throw new CliError("this command is not implemented yet");
}
