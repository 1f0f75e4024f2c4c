// The `testbed` power driver: a test bed's host answers power requests on a unix socket (the
// test bed stops its services and brings them back after a boot delay; services/ never imports
// it). Protocol, one exchange per connection: the request line `{"action":"on"|"off"|"status"}`,
// the answer line `{"state":"on"|"off"|"unknown"}` or `{"error":"…"}`.
import { createConnection } from "node:net";
import { type PowerDriver, PowerError, type PowerState } from "./driver.js";

export type TestbedAction = "on" | "off" | "status";
export interface TestbedAnswer {
  state?: PowerState;
  error?: string;
}

const TIMEOUT_MS = 60_000;

/** One request to the test bed's power socket; its answer's state. */
export function testbedRequest(socket: string, action: TestbedAction): Promise<PowerState> {
  return new Promise((resolve, reject) => {
    const c = createConnection(socket);
    let buf = "";
    const fail = (why: string, kind: "unavailable" | "deadline" = "unavailable") => {
      c.destroy();
      reject(new PowerError(kind, `testbed power ${action} (${socket}): ${why}`));
    };
    c.setTimeout(TIMEOUT_MS, () => fail(`no answer within ${TIMEOUT_MS} ms`, "deadline"));
    c.once("error", (e) => fail(e.message));
    c.once("connect", () => c.write(`${JSON.stringify({ action })}\n`));
    c.setEncoding("utf8").on("data", (d: string) => {
      buf += d;
      const nl = buf.indexOf("\n");
      if (nl < 0) return;
      c.end();
      let a: TestbedAnswer;
      try {
        a = JSON.parse(buf.slice(0, nl)) as TestbedAnswer;
      } catch {
        return fail("unreadable answer");
      }
      if (a.error) return fail(a.error);
      resolve(a.state === "on" || a.state === "off" ? a.state : "unknown");
    });
    c.once("end", () => {
      if (!buf.includes("\n")) fail("closed without an answer");
    });
  });
}

export class TestbedDriver implements PowerDriver {
  readonly reportsStatus = true;

  constructor(private readonly params: Record<string, string>) {}

  async on(): Promise<void> {
    await testbedRequest(this.params.socket, "on");
  }

  async off(): Promise<void> {
    await testbedRequest(this.params.socket, "off");
  }

  status(): Promise<PowerState> {
    return testbedRequest(this.params.socket, "status");
  }
}
