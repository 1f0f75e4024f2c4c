// Whether a local HTML page really renders, as headless Chromium sees it: a screenshot with ink
// on it (decoded here, testbed/png.ts) and the given names in the DOM after parsing.
import * as assert from "uvu/assert";
import { dumpDom, screenshot } from "../../testbed/chromium.js";
import { decodePng, inkStats } from "../../testbed/png.js";

export const SHOT = { width: 1100, height: 1400 };

/** The page's screenshot: its size, how many pixels differ from the background, how many colours. */
export async function shot(
  page: string,
): Promise<{ width: number; height: number; ink: number; colours: number }> {
  const img = decodePng(await screenshot(page, SHOT.width, SHOT.height));
  return { width: img.width, height: img.height, ...inkStats(img) };
}

/** Asserts the page renders: a screenshot that is not blank, and each of `names` as text in its DOM. */
export async function assertRenders(page: string, names: string[]): Promise<void> {
  const s = await shot(page);
  assert.equal([s.width, s.height], [SHOT.width, SHOT.height]);
  // A page of text, bars and curves: a good share of ink and many colours (anti-aliasing).
  assert.ok(s.ink > (s.width * s.height) / 100, `only ${s.ink} pixels of ink`);
  assert.ok(s.colours > 16, `only ${s.colours} colours`);
  const dom = await dumpDom(page);
  for (const n of names) assert.ok(dom.includes(`>${n}<`), `"${n}" is not in the rendered DOM`);
}
