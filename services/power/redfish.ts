// The `redfish` power driver: the BMC's ComputerSystem (`<url>/redfish/v1/Systems/<system>`):
// PowerState from a GET, POST Actions/ComputerSystem.Reset {ResetType: GracefulShutdown | On}.
// HTTP basic auth with the host's username and password; a Redfish error answer becomes a
// PowerError with its message (the password never appears in one).
import { type PowerDriver, PowerError, type PowerState, redact } from "./driver.js";

const TIMEOUT_MS = 30_000;

export class RedfishDriver implements PowerDriver {
  readonly reportsStatus = true;
  private readonly system: string;
  private readonly auth: string;

  constructor(
    params: Record<string, string>,
    private readonly password: string,
  ) {
    let base: URL;
    try {
      base = new URL(params.url);
    } catch {
      throw new PowerError("invalid", `redfish url ${JSON.stringify(params.url)} is not a URL`);
    }
    if (base.username || base.password)
      throw new PowerError(
        "invalid",
        "redfish url must not carry credentials (username is a parameter, the password comes from the credentials)",
      );
    this.system = new URL(
      `redfish/v1/Systems/${encodeURIComponent(params.system || "1")}`,
      base.href.endsWith("/") ? base : `${base.href}/`,
    ).href;
    this.auth = `Basic ${Buffer.from(`${params.username ?? ""}:${password}`).toString("base64")}`;
  }

  private async request(method: "GET" | "POST", url: string, body?: unknown): Promise<unknown> {
    const what = `redfish ${method} ${url}`;
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers: {
          authorization: this.auth,
          accept: "application/json",
          ...(body ? { "content-type": "application/json" } : {}),
        },
        body: body ? JSON.stringify(body) : undefined,
        signal: AbortSignal.timeout(TIMEOUT_MS),
      });
    } catch (err) {
      const e = err as Error & { cause?: Error };
      const kind = e.name === "TimeoutError" ? "deadline" : "unavailable";
      throw new PowerError(kind, redact(`${what}: ${e.cause?.message ?? e.message}`, this.password));
    }
    const text = await res.text();
    if (!res.ok) {
      const kind =
        res.status === 401
          ? "unauthenticated"
          : res.status === 403
            ? "permission"
            : res.status === 404
              ? "not-found"
              : "unavailable";
      throw new PowerError(
        kind,
        redact(`${what}: HTTP ${res.status} ${errorMessage(text) || res.statusText}`, this.password),
      );
    }
    if (!text) return undefined;
    try {
      return JSON.parse(text);
    } catch {
      throw new PowerError("unknown", `${what}: the answer is not JSON`);
    }
  }

  private reset(resetType: "On" | "GracefulShutdown"): Promise<unknown> {
    return this.request("POST", `${this.system}/Actions/ComputerSystem.Reset`, { ResetType: resetType });
  }

  async on(): Promise<void> {
    await this.reset("On");
  }

  async off(): Promise<void> {
    await this.reset("GracefulShutdown");
  }

  async status(): Promise<PowerState> {
    const sys = (await this.request("GET", this.system)) as { PowerState?: unknown } | undefined;
    const s = sys?.PowerState;
    if (s === "On") return "on";
    if (s === "Off") return "off";
    // PoweringOn, PoweringOff, Paused: not settled yet.
    if (typeof s === "string") return "unknown";
    throw new PowerError("unknown", `redfish GET ${this.system}: no PowerState in the answer`);
  }
}

/** A Redfish error body's message: error.@Message.ExtendedInfo[].Message, else error.message. */
function errorMessage(text: string): string {
  try {
    const e = (
      JSON.parse(text) as { error?: { message?: string; "@Message.ExtendedInfo"?: { Message?: string }[] } }
    ).error;
    const info = (e?.["@Message.ExtendedInfo"] ?? []).map((i) => i.Message).filter(Boolean);
    return info.length ? info.join("; ") : (e?.message ?? "");
  } catch {
    return text.trim().slice(0, 200);
  }
}
