// Runs `vmhop <command> …` against a table of commands: usage, lazy loading, and the one-line
// CliError. A command may be two words ("netreach demo") to sit beside a service's own
// subcommands while living elsewhere.
import { CliError } from "./errors.js";

export type CliModule = { run(argv: string[]): Promise<number> };
export type CommandTable = Record<string, { describe: string; load: () => Promise<CliModule> }>;

function usage(commands: CommandTable): string {
  const lines = Object.entries(commands).map(([k, v]) => `  ${k.padEnd(15)} ${v.describe}`);
  return `usage: vmhop <command> [args]\n\ncommands:\n${lines.join("\n")}\n\nRun 'vmhop <command> --help' for details.`;
}

async function dispatch(commands: CommandTable, argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help") {
    console.log(usage(commands));
    return cmd ? 0 : 2;
  }
  const two = rest.length ? commands[`${cmd} ${rest[0]}`] : undefined;
  const entry = two ?? commands[cmd];
  if (!entry) {
    console.error(`vmhop: unknown command '${cmd}'\n\n${usage(commands)}`);
    return 2;
  }
  // A broken import is a crash with its stack, never a polite "not implemented".
  const mod = await entry.load();
  return mod.run(two ? rest.slice(1) : rest);
}

/** Runs the command line; sets the exit code (a CliError is one line on stderr, no stack). */
export function runCli(commands: CommandTable, argv: string[]): void {
  dispatch(commands, argv).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      if (err instanceof CliError) {
        console.error(`vmhop: ${err.message}`);
        process.exitCode = err.exitCode;
      } else {
        console.error(err);
        process.exitCode = 1;
      }
    },
  );
}
