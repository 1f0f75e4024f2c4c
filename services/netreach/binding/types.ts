// A binding: where a VM's home addresses are reachable now. Plain data, validated at the edges.

import { isIPv4, isIPv6 } from "node:net";
import { ServiceError } from "../../common/errors.js";

export type BindingState = "active" | "moving" | "expired";

/** A site's SRv6 decapsulation SIDs: End.DT6 for IPv6 home addresses, End.DX4 for IPv4. */
export interface SiteEndpoint {
  site: string;
  sid6: string;
  sid4: string;
}

export interface Binding extends SiteEndpoint {
  vmId: string;
  mac: string;
  homeIpv6: string[];
  homeIpv4: string[];
  /** Issued by the control-plane; only a strictly newer one may re-point the binding. */
  generation: number;
  lifetimeSeconds: number;
  expiresAtMs: number;
  state: BindingState;
  /** While moving: the site being prepared. */
  movingTo?: string;
}

export interface RegisterRequest extends SiteEndpoint {
  vmId: string;
  mac: string;
  homeIpv6: string[];
  homeIpv4: string[];
  generation: number;
  lifetimeSeconds: number;
}

export interface UpdateRequest extends SiteEndpoint {
  vmId: string;
  generation: number;
  lifetimeSeconds?: number;
  /** When the VM started running at the site (epoch ms): the anchor measures the gap from it. */
  attachedAtMs?: number;
}

export class BindingError extends ServiceError {
  constructor(message: string) {
    super("invalid", message);
    this.name = "BindingError";
  }
}

const ID = /^[A-Za-z0-9_.-]{1,64}$/;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function need(ok: boolean, what: string): void {
  if (!ok) throw new BindingError(what);
}

export function checkVmId(vmId: string): void {
  need(typeof vmId === "string" && ID.test(vmId), `invalid vm id '${vmId}' (want [A-Za-z0-9_.-]{1,64})`);
}

export function checkGeneration(g: number): void {
  need(Number.isSafeInteger(g) && g > 0, `invalid generation ${g} (want an integer > 0)`);
}

export function checkLifetime(s: number): void {
  need(Number.isInteger(s) && s > 0 && s <= 86_400, `invalid lifetime ${s} s (want 1..86400)`);
}

export function checkEndpoint(e: SiteEndpoint): void {
  need(typeof e.site === "string" && ID.test(e.site), `invalid site '${e.site}'`);
  need(isIPv6(e.sid6), `invalid IPv6 SID '${e.sid6}'`);
  need(isIPv6(e.sid4), `invalid IPv4-decap SID '${e.sid4}'`);
}

export function checkRegister(r: RegisterRequest): void {
  checkVmId(r.vmId);
  need(
    typeof r.mac === "string" && MAC.test(r.mac),
    `invalid MAC '${r.mac}' (want lower-case aa:bb:cc:dd:ee:ff)`,
  );
  need(Array.isArray(r.homeIpv6) && Array.isArray(r.homeIpv4), "home addresses must be arrays");
  need(r.homeIpv6.length + r.homeIpv4.length > 0, `vm ${r.vmId} has no home address`);
  for (const a of r.homeIpv6) need(isIPv6(a), `invalid IPv6 home address '${a}'`);
  for (const a of r.homeIpv4) need(isIPv4(a), `invalid IPv4 home address '${a}'`);
  checkGeneration(r.generation);
  checkLifetime(r.lifetimeSeconds);
  checkEndpoint(r);
}

export function checkUpdate(u: UpdateRequest): void {
  checkVmId(u.vmId);
  checkGeneration(u.generation);
  if (u.lifetimeSeconds !== undefined) checkLifetime(u.lifetimeSeconds);
  checkEndpoint(u);
}
