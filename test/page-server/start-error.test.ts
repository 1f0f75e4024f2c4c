// A QEMU that ends during start-up: its own words become the error, with the kind that says
// whose fault it is (the spec, the host's memory, a signal).
import * as assert from "uvu/assert";
import { qemuMessage, qemuStartError } from "../../services/page-server/vm/start-error.js";
import { test } from "../helpers/uvu.js";

test("QEMU's own lines are picked from its log", () => {
  assert.is(
    qemuMessage("\nsome noise\nqemu: could not open kernel file '/k': No such file or directory\n"),
    "qemu: could not open kernel file '/k': No such file or directory",
  );
  assert.is(qemuMessage("just one line\n"), "just one line", "without QEMU's prefix: the last lines");
  assert.is(qemuMessage(""), "");
});

test("the kind: a refused spec, memory the host lacks, a signal", () => {
  const bad = qemuStartError("v", { code: 1, signal: null }, "qemu: could not open kernel file '/k'\n");
  assert.is(bad.kind, "invalid");
  assert.is(
    bad.message,
    "VM v did not start: QEMU exited with code 1: qemu: could not open kernel file '/k'",
  );
  const mem = qemuStartError(
    "v",
    { code: 1, signal: null },
    "qemu-system-x86_64: cannot set up guest memory 'pc.ram': Cannot allocate memory\n",
  );
  assert.is(mem.kind, "exhausted");
  const killed = qemuStartError("v", { code: null, signal: "SIGKILL" }, "");
  assert.is(killed.kind, "unavailable");
  assert.is(killed.message, "VM v did not start: QEMU was killed by SIGKILL (its log is empty)");
});

test.run();
