// create-vm's flags → CreateVm's spec and disk: sizes, one disk at most, required fields.
import * as assert from "uvu/assert";
import { createVmRequest, parseSize, VmArgsError } from "../../services/control-plane/vm-args.js";
import { test } from "../helpers/uvu.js";

const args = {
  vmId: "vm1",
  memoryMib: 256,
  vcpus: 1,
  kernel: "/k",
  initrd: "",
  cmdline: "console=ttyS0",
  tap: "",
  mac: "",
  diskUrl: "",
  diskImage: "",
  diskSize: "",
};

test("sizes in bytes or binary units", () => {
  assert.equal(["4096", "256M", "256m", "2G", "512KiB", "1T"].map(parseSize), [
    4096,
    256 * 2 ** 20,
    256 * 2 ** 20,
    2 * 2 ** 30,
    512 * 1024,
    2 ** 40,
  ]);
  for (const bad of ["", "0", "-1M", "1.5G", "12Q"])
    assert.throws(
      () => parseSize(bad),
      (e: Error) => e instanceof VmArgsError,
      bad,
    );
});

test("a disk by URL, image or size; never two", () => {
  assert.is(createVmRequest({ ...args, diskUrl: "nbd://h:1/d" }).spec.diskNbdUrl, "nbd://h:1/d");
  assert.is(createVmRequest({ ...args, diskUrl: "nbd://h:1/d" }).disk, undefined);
  assert.equal(createVmRequest({ ...args, diskImage: "/img" }).disk, {
    source: { $case: "imagePath", value: "/img" },
  });
  assert.equal(createVmRequest({ ...args, diskSize: "64M" }).disk, {
    source: { $case: "sizeBytes", value: 64 * 2 ** 20 },
  });
  assert.throws(
    () => createVmRequest({ ...args, diskImage: "/img", diskSize: "1G" }),
    /give one disk, not --disk-image and --disk-size/,
  );
  assert.throws(
    () => createVmRequest({ ...args, diskUrl: "/dev/sda" }),
    /--disk-url must be an nbd:\/\/ URL/,
  );
  assert.throws(() => createVmRequest({ ...args, kernel: "" }), /--kernel PATH is required/);
  assert.equal(createVmRequest({ ...args, homeIpv6: "fd00::5, fd00::6", homeIpv4: "10.9.0.5" }).network, {
    homeIpv6: ["fd00::5", "fd00::6"],
    homeIpv4: ["10.9.0.5"],
  });
  assert.is(createVmRequest(args).network, undefined);
  assert.throws(
    () => createVmRequest({ ...args, memoryMib: 0 }),
    /--memory-mib must be a positive whole number/,
  );
});

test.run();
