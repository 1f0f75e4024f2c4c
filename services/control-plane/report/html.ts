// Text into HTML and SVG (pure): every string from a record or a measurement goes through esc(),
// so an id such as `<script>` reads as text and can never become markup.

const ENTITIES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
};

/** `s` safe as element text and as a quoted attribute value. */
export function esc(s: unknown): string {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ENTITIES[c]);
}

/** A number for an SVG attribute: finite, at most two decimals (NaN and infinities become 0). */
export function num(n: number): string {
  return Number.isFinite(n) ? String(Math.round(n * 100) / 100) : "0";
}

/** "850 ms", "4.21 s", "2 min 05 s". */
export function fmtMs(ms: number): string {
  if (!Number.isFinite(ms)) return "n/a";
  const a = Math.abs(ms);
  if (a < 1000) return `${Math.round(ms)} ms`;
  if (a < 60_000) return `${(ms / 1000).toFixed(2)} s`;
  const s = Math.round(a / 1000);
  return `${ms < 0 ? "-" : ""}${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
}

/** "512 B", "3.4 KiB", "96.0 MiB", "1.25 GiB". */
export function fmtBytes(n: number): string {
  if (!Number.isFinite(n)) return "n/a";
  if (n < 1024) return `${n} B`;
  if (n < 2 ** 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 2 ** 30) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  return `${(n / 2 ** 30).toFixed(2)} GiB`;
}
