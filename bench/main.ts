// `npm run bench -- NAME [options]`: each benchmark is bench/NAME.ts exporting main(args).
import { existsSync, readdirSync } from "node:fs";

const [name, ...args] = process.argv.slice(2);
const here = new URL(".", import.meta.url).pathname;
const available = readdirSync(here)
  .filter((f) => f.endsWith(".ts") && f !== "main.ts")
  .map((f) => f.slice(0, -3));
if (!name || !existsSync(`${here}${name}.ts`)) {
  console.error(`usage: npm run bench -- NAME [--quick] [options]\nbenchmarks: ${available.join(", ")}`);
  process.exit(2);
}
const mod = (await import(`./${name}.ts`)) as { main(args: string[]): Promise<void> };
await mod.main(args);
