// The consolidation demo's summary as text: power per phase by the hosts' power model, the
// plans and their migrations, the hosts switched off and woken, each guest's largest stall.
import { type ConsolidateResult, HOST_MODEL } from "./consolidate.js";

export function consolidationSummary(r: ConsolidateResult): string {
  const out: string[] = [];
  out.push(
    `\npower by the hosts' model (HP ProLiant ${HOST_MODEL}, SPECpower; a host switched off draws 0 W; a vCPU counts ${r.vcpu_mips} MIPS)`,
  );
  out.push(
    `  ${"phase".padEnd(36)}${"mean W".padStart(8)}${"W if unmoved".padStart(14)}  seconds   Wh   hosts on at its end`,
  );
  for (const p of r.phases)
    out.push(
      `  ${p.phase.padEnd(36)}${String(p.mean_watts).padStart(8)}${String(p.mean_watts_unconsolidated).padStart(14)}  ${String(p.seconds).padStart(7)}  ${p.wh.toFixed(2).padStart(5)}  ${p.hosts_on.join(", ")}`,
    );
  const wh = r.phases.reduce((s, p) => s + p.wh, 0);
  const whU = r.phases.reduce((s, p) => s + p.wh_unconsolidated, 0);
  if (whU > 0)
    out.push(
      `  energy over the run: ${wh.toFixed(2)} Wh, against ${whU.toFixed(2)} Wh had every VM stayed where it started with every host on (${(((wh - whU) / whU) * 100).toFixed(0)} %)`,
    );
  out.push("\nplans (placement service, from the load it measured)");
  for (const p of r.plans) {
    const moves = p.moves
      .map((m) => `${m.vm_id} ${m.from} → ${m.to} ${m.state || "?"}${m.error ? ` (${m.error})` : ""}`)
      .join("; ");
    const power = [
      p.hosts_to_sleep.length ? `off ${p.hosts_to_sleep.join(", ")}` : "",
      p.hosts_to_wake.length ? `wake ${p.hosts_to_wake.join(", ")}` : "",
    ].filter(Boolean);
    out.push(
      `  ${p.plan_id.padEnd(6)} ${p.state.padEnd(8)} ${[moves, ...power].filter(Boolean).join("; ")}  (predicted ${p.predicted_watts_before} → ${p.predicted_watts_after} W)`,
    );
  }
  out.push("\nsummary");
  const rows: [string, string][] = [
    ["migrations done", String(r.migrations)],
    ["hosts switched off", r.hosts_switched_off.join(", ") || "none"],
    ["hosts woken", r.hosts_woken.join(", ") || "none"],
    ...r.guests.map((g): [string, string] => [
      `${g.vm_id}`,
      `${g.verified ? "verified" : "NOT VERIFIED"}, largest stall ${g.max_stall_ms} ms, ran on ${g.hosts.join(" → ")}`,
    ]),
  ];
  for (const [k, v] of rows) out.push(`  ${k.padEnd(24)}${v}`);
  for (const g of r.guests) if (g.errors.length) out.push(`\n${g.vm_id} errors:\n  ${g.errors.join("\n  ")}`);
  out.push(r.ok ? "\nevery check passed" : `\nSOME CHECKS FAILED:\n  ${r.failures.join("\n  ")}`);
  return out.join("\n");
}
