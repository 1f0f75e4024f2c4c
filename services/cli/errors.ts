// The CLI's user-facing error: the dispatcher prints its message as one line and exits with its code.
/** An error meant for the user: printed as one line, no stack. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 2,
  ) {
    super(message);
    this.name = "CliError";
  }
}
