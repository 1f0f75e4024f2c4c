// The one check of a VM's id and sizes (control-plane and page-server alike): what passes, and
// each refusal naming its field and the rule.
import * as assert from "uvu/assert";
import { vmIdProblem, vmSpecProblem } from "../../services/common/vm-spec-validation.js";
import { test } from "../helpers/uvu.js";

const ok = { vmId: "vm-1", vcpus: 1, memoryMib: 256 };

test("good specs pass", () => {
  for (const s of [ok, { ...ok, vmId: "A".repeat(63) }, { ...ok, vcpus: 64, memoryMib: 32 }])
    assert.is(vmSpecProblem(s), undefined, JSON.stringify(s));
  assert.is(vmIdProblem("9lives"), undefined);
});

test("ids: no dots, underscores, slashes, leading dash, empty or over 63", () => {
  for (const id of ["vm.1", "vm_1", "a/b", "-x", "", "A".repeat(64)])
    assert.match(
      vmSpecProblem({ ...ok, vmId: id }) ?? "",
      new RegExp(
        `^VM spec: vm_id ${JSON.stringify(id).replace(/[.]/g, "\\.")} must be 1-63 letters, digits or dashes`,
      ),
      id,
    );
});

test("sizes: vcpus 1-64 and memory 32 MiB-1 TiB, whole numbers", () => {
  assert.is(
    vmSpecProblem({ ...ok, memoryMib: 0 }),
    "VM spec: memory_mib 0 must be a whole number 32-1048576 (MiB)",
  );
  assert.match(vmSpecProblem({ ...ok, memoryMib: 31 }) ?? "", /memory_mib 31/);
  assert.match(vmSpecProblem({ ...ok, memoryMib: (1 << 20) + 1 }) ?? "", /memory_mib 1048577/);
  assert.match(vmSpecProblem({ ...ok, memoryMib: 64.5 }) ?? "", /memory_mib 64\.5/);
  assert.is(vmSpecProblem({ ...ok, vcpus: 0 }), "VM spec: vcpus 0 must be a whole number 1-64");
  assert.match(vmSpecProblem({ ...ok, vcpus: 65 }) ?? "", /vcpus 65/);
  // The id is named first: one problem at a time, the first field.
  assert.match(vmSpecProblem({ vmId: "x.y", vcpus: 0, memoryMib: 0 }) ?? "", /vm_id/);
});

test.run();
