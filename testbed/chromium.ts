// Headless Chromium (Debian's `chromium`) on a local page: a screenshot and the DOM after
// parsing, each one run of the browser with a throw-away profile, bounded in time.
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { tempDir } from "./temp-dir.js";

const run = promisify(execFile);

function flags(profile: string): string[] {
  return [
    "--headless",
    "--no-sandbox", // as root, Chromium's sandbox refuses to start
    "--disable-gpu",
    "--no-first-run",
    "--disable-extensions",
    "--disable-background-networking",
    "--hide-scrollbars",
    `--user-data-dir=${profile}`,
  ];
}

async function chromium<T>(fn: (profile: string) => Promise<T>): Promise<T> {
  const dir = tempDir("vmhop-chromium-");
  try {
    return await fn(dir.path);
  } finally {
    dir.cleanup();
  }
}

/** A PNG of the page at `width`×`height` CSS pixels. */
export function screenshot(
  page: string,
  width: number,
  height: number,
  timeoutMs = 120_000,
): Promise<Buffer> {
  return chromium(async (profile) => {
    const out = join(profile, "shot.png");
    await run(
      "chromium",
      [
        ...flags(profile),
        `--screenshot=${out}`,
        `--window-size=${width},${height}`,
        pathToFileURL(page).href,
      ],
      { timeout: timeoutMs, maxBuffer: 16 << 20 },
    );
    return readFileSync(out);
  });
}

/** The page's DOM as Chromium serialises it once loaded. */
export function dumpDom(page: string, timeoutMs = 120_000): Promise<string> {
  return chromium(
    async (profile) =>
      (
        await run("chromium", [...flags(profile), "--dump-dom", pathToFileURL(page).href], {
          timeout: timeoutMs,
          maxBuffer: 64 << 20,
        })
      ).stdout,
  );
}
