// The consolidation demo's summary as text: power per phase by the hosts' power model, the
// plans and their migrations, the hosts switched off and woken, each guest's largest stall.
import { type ConsolidateResult, HOST_MODEL } from "./consolidate.js";

export function consolidationSummary(r: ConsolidateResult): string {
  const out: string[] = [];
  out.push(
    `\npower by the hosts' model (HP ProLiant ${HOST_MODEL}, SPECpower; a host switched off draws 0 W; a vCPU counts ${r.vcpu_mips} MIPS)`,
  );
  for (const p of r.phases)
    out.push(
      `  ${p.phase.padEnd(44)}${String(p.mean_watts).padStart(5)} W mean over ${String(p.seconds).padStart(4)} s = ${p.wh.toFixed(2)} Wh  (on: ${p.hosts_on.join(", ")})`,
    );
  const low = r.phases.find((p) => p.phase.startsWith("load low, before"));
  const cons = r.phases.find((p) => p.phase.startsWith("load low, consolidated"));
  if (low && cons && low.mean_watts > 0)
    out.push(
      `  at low load: ${low.mean_watts} W → ${cons.mean_watts} W (${(((cons.mean_watts - low.mean_watts) / low.mean_watts) * 100).toFixed(0)} %), ` +
        `${((low.mean_watts * 24) / 1000).toFixed(2)} → ${((cons.mean_watts * 24) / 1000).toFixed(2)} kWh a day`,
    );
  out.push("\nplans (placement service, from the load it measured)");
  for (const p of r.plans) {
    const moves = p.moves.map((m) => `${m.vm_id} ${m.from} → ${m.to} ${m.state || "?"}`).join("; ");
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
