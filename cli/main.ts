// `vmhop`: the services' commands and the tools' commands in one entry point.
import { serviceCommands } from "../services/cli/commands.js";
import { runCli } from "../services/cli/dispatch.js";
import { toolCommands } from "./tools.js";

runCli({ ...serviceCommands, ...toolCommands }, process.argv.slice(2));
