// The test bed's side of the `testbed` power driver (services/power/testbed.ts): a unix socket
// answering on/off/status for one test-bed host. `off` stops the host's services (answering once
// they are down); `on` is accepted at once and the host boots after `bootDelayMs`, as a BMC
// accepts a power-on long before the machine is up; status says `on` only once it is.
import { rmSync } from "node:fs";
import { createServer, type Server } from "node:net";
import type { TestbedAction, TestbedAnswer } from "../services/power/testbed.js";

export interface TestbedHost {
  /** Stops the host's services (and whatever runs in its namespace). */
  off(): Promise<void>;
  /** Starts them again. */
  on(): Promise<void>;
}

export interface TestbedPower {
  readonly socket: string;
  /** What the host is doing: on, off, booting, stopping, or failed (booting threw). */
  readonly state: string;
  /** The requests received, in order. */
  readonly requests: TestbedAction[];
  close(): Promise<void>;
}

export async function serveTestbedPower(
  socket: string,
  host: TestbedHost,
  opts: { bootDelayMs?: number } = {},
): Promise<TestbedPower> {
  let state = "on";
  let why = "";
  const requests: TestbedAction[] = [];
  let booting: Promise<void> = Promise.resolve();
  const answer = async (action: TestbedAction): Promise<TestbedAnswer> => {
    requests.push(action);
    if (action === "status")
      return state === "failed" ? { error: `boot failed: ${why}` } : { state: state === "on" ? "on" : "off" };
    if (action === "off") {
      await booting; // a host still booting is switched off once it is up
      if (state === "on" || state === "failed") {
        state = "stopping";
        await host.off();
        state = "off";
      }
      return { state: "off" };
    }
    if (state === "off" || state === "failed") {
      state = "booting";
      booting = (async () => {
        await new Promise((r) => setTimeout(r, opts.bootDelayMs ?? 2000));
        try {
          await host.on();
          state = "on";
        } catch (err) {
          why = (err as Error).message;
          state = "failed";
        }
      })();
    }
    return { state: state === "on" ? "on" : "off" };
  };
  rmSync(socket, { force: true });
  const server: Server = createServer((c) => {
    let buf = "";
    c.setEncoding("utf8").on("data", (d: string) => {
      buf += d;
      const nl = buf.indexOf("\n");
      if (nl < 0) return;
      let action: TestbedAction | undefined;
      try {
        action = (JSON.parse(buf.slice(0, nl)) as { action?: TestbedAction }).action;
      } catch {}
      const reply = (a: TestbedAnswer) => c.end(`${JSON.stringify(a)}\n`);
      if (action !== "on" && action !== "off" && action !== "status")
        return reply({ error: `unknown request ${JSON.stringify(buf.slice(0, nl))}` });
      answer(action).then(reply, (err: Error) => reply({ error: err.message }));
    });
    c.on("error", () => {});
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socket, resolve);
  });
  return {
    socket,
    get state() {
      return state;
    },
    requests,
    close: async () => {
      await booting;
      await new Promise((r) => server.close(r));
    },
  };
}
