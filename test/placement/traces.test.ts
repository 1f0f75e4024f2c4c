import * as assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseVmFile, readCloudSimDir } from "../../services/placement/traces/cloudsim-dir.js";
import { listDays, loadDay } from "../../services/placement/traces/load.js";
import { mixDays } from "../../services/placement/traces/mix.js";
import { TraceError } from "../../services/placement/traces/trace.js";
import { parseDayTsv } from "../../services/placement/traces/tsv.js";
import { test } from "../helpers/uvu.js";

const row = (name: string, n = 288, v = "10") => [name, ...Array(n).fill(v)].join("\t");

function refused(fn: () => unknown, file: string, line: number, why: RegExp) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof TraceError, String(e));
    assert.equal(e.file, file);
    assert.equal(e.line, line);
    assert.match(e.message, new RegExp(`^${file.replace(/[.]/g, "\\.")}:${line}: `));
    assert.match(e.message, why);
    return true;
  });
}

test("tsv: names and fractions", () => {
  const d = parseDayTsv(`${row("a b")}\n${row("c", 288, "100")}\n`, "x.tsv", "d1");
  assert.equal(d.vms.length, 2);
  assert.equal(d.vms[0].name, "a b");
  assert.equal(d.vms[0].samples.length, 288);
  assert.equal(d.vms[0].samples[5], 0.1);
  assert.equal(d.vms[1].samples[287], 1);
});

test("tsv: wrong length refused with file and line", () => {
  refused(
    () => parseDayTsv(`${row("a")}\n${row("b", 287)}\n`, "d.tsv", "d"),
    "d.tsv",
    2,
    /expected 288 values.*found 287/,
  );
});

test("tsv: missing value refused", () => {
  const cols = row("a").split("\t");
  cols[7] = "";
  refused(
    () => parseDayTsv(`${row("x")}\n${row("y")}\n${cols.join("\t")}\n`, "d.tsv", "d"),
    "d.tsv",
    3,
    /value 7: missing value/,
  );
});

test("tsv: non-numeric and out-of-range refused", () => {
  const cols = row("a").split("\t");
  cols[3] = "1e3x";
  refused(() => parseDayTsv(cols.join("\t"), "d.tsv", "d"), "d.tsv", 1, /not a number/);
  cols[3] = "101";
  refused(() => parseDayTsv(cols.join("\t"), "d.tsv", "d"), "d.tsv", 1, /above 100/);
  cols[3] = "-5";
  refused(() => parseDayTsv(cols.join("\t"), "d.tsv", "d"), "d.tsv", 1, /not a number/);
});

test("tsv: empty file and missing name refused", () => {
  refused(() => parseDayTsv("", "e.tsv", "d"), "e.tsv", 1, /no VMs/);
  refused(() => parseDayTsv(row(""), "e.tsv", "d"), "e.tsv", 1, /missing VM name/);
});

test("cloudsim file: one value per line", () => {
  const vm = parseVmFile(`${Array(288).fill("50").join("\n")}\n`, "f", "vm1");
  assert.equal(vm.samples[0], 0.5);
  refused(
    () => parseVmFile(Array(100).fill("5").join("\n"), "f", "vm"),
    "f",
    101,
    /expected 288 lines, found 100/,
  );
  const lines = Array(288).fill("5");
  lines[41] = "abc";
  refused(() => parseVmFile(lines.join("\n"), "f", "vm"), "f", 42, /not a number/);
  lines[41] = " ";
  refused(() => parseVmFile(lines.join("\n"), "f", "vm"), "f", 42, /missing value/);
});

test("both layouts load from a directory, sorted by name", () => {
  const dir = mkdtempSync(join(tmpdir(), "vmhop-traces-"));
  try {
    writeFileSync(join(dir, "day1.tsv"), `${row("b")}\n${row("a")}\n`);
    mkdirSync(join(dir, "day2"));
    writeFileSync(join(dir, "day2", "zz"), Array(288).fill("20").join("\n"));
    writeFileSync(join(dir, "day2", "aa"), Array(288).fill("30").join("\n"));
    assert.deepEqual(listDays(dir), ["day1", "day2"]);
    assert.deepEqual(
      loadDay(dir, "day1").vms.map((v) => v.name),
      ["b", "a"],
    );
    const d2 = loadDay(dir, "day2");
    assert.deepEqual(
      d2.vms.map((v) => v.name),
      ["aa", "zz"],
    );
    assert.equal(d2.vms[0].samples[0], 0.3);
    assert.throws(() => loadDay(dir, "day3"), /no traces for day day3/);
    writeFileSync(join(dir, "day2", "bad"), "1\n2\n");
    refused(
      () => readCloudSimDir(join(dir, "day2"), "day2"),
      join(dir, "day2", "bad"),
      3,
      /expected 288 lines/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("mixed days: seeded sample of VMs, rotated in time", () => {
  const src = [0, 1].map((d) => ({
    day: `d${d}`,
    vms: [...Array(50).keys()].map((i) => ({
      name: `d${d}-${String(i).padStart(2, "0")}`,
      samples: Float64Array.from({ length: 288 }, (_, k) => k / 288),
    })),
  }));
  const a = mixDays(src, 3, 20, 40);
  const b = mixDays(src, 3, 20, 40);
  assert.deepEqual(a, b);
  assert.ok(a.vms.length >= 20 && a.vms.length <= 40);
  assert.equal(new Set(a.vms.map((v) => v.name)).size, a.vms.length, "no VM twice");
  const names = a.vms.map((v) => v.name);
  assert.deepEqual(names, [...names].sort());
  // rotated: sample 0 is some k/288 and consecutive samples stay consecutive modulo the day
  const s0 = a.vms[0].samples;
  const k0 = Math.round(s0[0] * 288);
  assert.ok(Math.abs(s0[1] - ((k0 + 1) % 288) / 288) < 1e-12);
  assert.notDeepEqual(mixDays(src, 4, 20, 40), a);
});

test.run();
