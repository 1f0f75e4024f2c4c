// Runs the vmhop command line as a user would (`bin/vmhop.js ARGS…`, a process of its own) and
// answers its exit code and output, whether it succeeded or not.
import { execFile } from "node:child_process";
import { promisify } from "node:util";

const bin = new URL("../../bin/vmhop.js", import.meta.url).pathname;
const run = promisify(execFile);

export async function vmhop(args: string[]): Promise<{ code: number; out: string; err: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [bin, ...args]);
    return { code: 0, out: stdout, err: stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, out: x.stdout, err: x.stderr };
  }
}
