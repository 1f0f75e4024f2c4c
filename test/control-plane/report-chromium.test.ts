// The report page as a browser renders it: headless Chromium (Debian's `chromium`) takes a
// screenshot of the page made from the recorded run (not blank) and dumps its DOM (every phase
// there); a blank page is seen as blank, so the check can fail.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { migrationToPb } from "../../services/control-plane/grpc.js";
import type { MigrationRecord } from "../../services/control-plane/records.js";
import { renderReport } from "../../services/control-plane/report/render.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { assertRenders, shot } from "../helpers/rendered.js";
import { test } from "../helpers/uvu.js";

const t = gate(test, ["chromium"], "headless Chromium");
const dir = tempDir("vmhop-report-");
const rec = JSON.parse(
  readFileSync(new URL("../fixtures/migration-record.json", import.meta.url), "utf8"),
) as MigrationRecord;

t(
  "the recorded run's page renders: a screenshot with ink, every phase and address step in the DOM",
  async () => {
    const page = join(dir.path, "report.html");
    const m = migrationToPb(rec);
    writeFileSync(
      page,
      renderReport(m, {
        heartbeatGaps: [{ startUnixMs: m.enteredUnixMs.switched, ms: 800 }],
        heartbeatEveryMs: 100,
      }),
    );
    await assertRenders(page, [
      ...Object.keys(rec.entered_unix_ms ?? {}),
      ...Object.keys(rec.network?.entered_unix_ms ?? {}),
      "guest heartbeat gaps",
    ]);
  },
);

t("a blank page is seen as blank", async () => {
  const page = join(dir.path, "blank.html");
  writeFileSync(page, "<!DOCTYPE html><html><body></body></html>");
  const s = await shot(page);
  assert.equal([s.ink, s.colours], [0, 1]);
});

t.after(() => dir.cleanup());
t.run();
