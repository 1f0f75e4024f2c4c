// Pure parts of the VM layer: spec validation, accelerator choice, QEMU argv, state table,
// heartbeat parsing and stats.
import * as assert from "uvu/assert";
import { chooseAccel } from "../../services/page-server/vm/accel.js";
import { HeartbeatTracker, parseHeartbeat } from "../../services/page-server/vm/heartbeat.js";
import { buildQemuArgs, optValue } from "../../services/page-server/vm/qemu-args.js";
import {
  specDifference,
  type VmSpec,
  VmSpecError,
  validateSpec,
} from "../../services/page-server/vm/spec.js";
import { IllegalTransitionError, nextState, transitions } from "../../services/page-server/vm/states.js";
import { test } from "../helpers/uvu.js";

const spec: VmSpec = {
  name: "g1",
  vcpus: 2,
  memoryMib: 256,
  kernel: "/k/vmlinux",
  initrd: "/k/initrd",
  cmdline: "console=ttyS0",
};
const paths = { qmpSocket: "/run/q.sock", serialSocket: "/run/s.sock", serialLog: "/run/s,1.log" };

function after(args: string[], flag: string): string[] {
  return args.flatMap((a, i) => (a === flag ? [args[i + 1]] : []));
}

test("specDifference names the first field two specs differ in; unset equals empty", () => {
  assert.is(specDifference(spec, { ...spec }), undefined);
  // As a spec comes back from spec.json (undefined fields dropped) and from the proto ("" → undefined).
  assert.is(
    specDifference(JSON.parse(JSON.stringify({ ...spec, disk: undefined })), { ...spec, disk: undefined }),
    undefined,
  );
  assert.is(
    specDifference({ ...spec, nic: { tap: "t0" } }, { ...spec, nic: { tap: "t0", mac: undefined } }),
    undefined,
  );
  assert.is(specDifference(spec, { ...spec, memoryMib: 128 }), "memoryMib is 256 here, 128 in this request");
  assert.is(
    specDifference(spec, { ...spec, initrd: undefined }),
    'initrd is "/k/initrd" here, unset in this request',
  );
  assert.is(
    specDifference({ ...spec, disk: { nbd: "nbd://a/x" } }, { ...spec, disk: { nbd: "nbd://b/x" } }),
    'disk is {"nbd":"nbd://a/x"} here, {"nbd":"nbd://b/x"} in this request',
  );
});

test("validateSpec accepts a good spec and names the bad field", () => {
  assert.equal(validateSpec(spec), spec);
  const cases: [Partial<VmSpec>, RegExp][] = [
    [{ name: "bad name" }, /name/],
    [{ vcpus: 0 }, /vcpus/],
    [{ memoryMib: 8 }, /memory_mib/],
    [{ kernel: "" }, /kernel/],
    [{ disk: { nbd: "/tmp/disk.img" } }, /nbd:\/\//],
    [{ nic: { tap: "tap0", mac: "zz" } }, /mac/],
  ];
  for (const [patch, re] of cases) {
    try {
      validateSpec({ ...spec, ...patch });
      assert.unreachable(`accepted ${JSON.stringify(patch)}`);
    } catch (err) {
      assert.instance(err, VmSpecError);
      assert.match((err as Error).message, re);
    }
  }
});

test("chooseAccel: KVM only with vmx/svm and /dev/kvm", () => {
  const flags = (f: string) => `processor\t: 0\nflags\t\t: fpu sse2 ${f} avx\n`;
  assert.is(chooseAccel(flags("vmx"), true), "kvm");
  assert.is(chooseAccel(flags("svm"), true), "kvm");
  assert.is(chooseAccel(flags("vmx"), false), "tcg");
  assert.is(chooseAccel(flags("hypervisor"), true), "tcg"); // software /dev/kvm: slow, avoid
  assert.is(chooseAccel("", true), "tcg");
});

test("buildQemuArgs: machine, memory, kernel, sockets, no disk or nic unless asked", () => {
  const a = buildQemuArgs(spec, paths, "tcg");
  assert.equal(after(a, "-accel"), ["tcg"]);
  assert.equal(after(a, "-cpu"), ["qemu64"]);
  assert.equal(after(a, "-smp"), ["2"]);
  assert.equal(after(a, "-m"), ["256"]);
  assert.equal(after(a, "-kernel"), ["/k/vmlinux"]);
  assert.equal(after(a, "-initrd"), ["/k/initrd"]);
  assert.equal(after(a, "-append"), ["console=ttyS0"]);
  assert.equal(after(a, "-qmp"), ["unix:/run/q.sock,server=on,wait=off"]);
  assert.match(after(a, "-chardev")[0], /path=\/run\/s\.sock,.*logfile=\/run\/s,,1\.log/);
  assert.ok(a.includes("-no-reboot"));
  assert.not.ok(a.includes("-drive") || a.includes("-netdev") || a.includes("-S") || a.includes("-incoming"));
});

test("buildQemuArgs: trace patterns become one -trace each, time-stamped messages; none by default", () => {
  const a = buildQemuArgs(spec, paths, "tcg", { trace: ["postcopy_*", "loadvm_*"] });
  assert.equal(after(a, "-trace"), ["enable=postcopy_*", "enable=loadvm_*"]);
  assert.equal(after(a, "-msg"), ["timestamp=on"]);
  assert.not.ok(buildQemuArgs(spec, paths, "tcg").includes("-trace"));
});

test("buildQemuArgs: kvm, NBD disk, tap NIC, paused and incoming", () => {
  const a = buildQemuArgs(
    { ...spec, disk: { nbd: "nbd://10.0.0.1:10809/vm1" }, nic: { tap: "tap7", mac: "52:54:00:00:00:07" } },
    paths,
    "kvm",
    { paused: true, incoming: true },
  );
  assert.equal(after(a, "-cpu"), ["host"]);
  assert.equal(after(a, "-drive"), ["file=nbd://10.0.0.1:10809/vm1,if=none,id=disk0,format=raw"]);
  // An explicit geometry: QEMU does not read the (maybe remote, lazy) disk while it starts.
  assert.ok(
    after(a, "-device").includes("virtio-blk-pci,drive=disk0,id=vd0,addr=0x2,cyls=16383,heads=16,secs=63"),
  );
  assert.equal(after(a, "-netdev"), ["tap,id=net0,ifname=tap7,script=no,downscript=no"]);
  assert.ok(
    after(a, "-device").includes("virtio-net-pci,netdev=net0,id=nic0,addr=0x3,mac=52:54:00:00:00:07"),
  );
  assert.ok(a.includes("-S"));
  assert.equal(after(a, "-incoming"), ["defer"]);
  assert.is(optValue("a,b"), "a,,b");
});

test("state table: legal paths and illegal events", () => {
  let s = nextState("defined", "spawn");
  s = nextState(s, "up-running");
  s = nextState(s, "pause");
  s = nextState(s, "resume");
  assert.is(s, "running");
  assert.is(nextState("incoming", "migrated-in"), "running");
  assert.is(nextState("running", "migrated-out"), "postmigrate");
  assert.is(nextState("running", "crash"), "crashed");
  assert.is(nextState("stopping", "crash"), "stopped"); // we asked it to end
  assert.throws(
    () => nextState("running", "resume"),
    (e: unknown) => e instanceof IllegalTransitionError,
  );
  assert.throws(() => nextState("crashed", "spawn"), /crashed cannot spawn/);
  assert.equal(Object.keys(transitions.stopped), []);
  assert.equal(Object.keys(transitions.crashed), []);
});

test("parseHeartbeat and HeartbeatTracker", () => {
  assert.equal(parseHeartbeat("HB 12 3456 0 2 11 0\r"), {
    counter: 12,
    verifyOk: 3456,
    memErrors: 0,
    passes: 2,
    diskOk: 11,
    diskErrors: 0,
  });
  for (const bad of ["HB 1 2 3", "HB x 2 3 4 5 6", "hb 1 2 3 4 5 6", "WORKLOAD start", "HB 1 2 3 4 5 6 7"])
    assert.is(parseHeartbeat(bad), null, bad);
  const t = new HeartbeatTracker();
  const hb = (n: number) => parseHeartbeat(`HB ${n} 0 0 0 0 0`)!;
  t.observe(hb(1), 1000);
  t.observe(hb(2), 1100);
  t.observe(hb(3), 1450);
  assert.is(t.stats.maxGapMs, 350);
  assert.is(t.stats.counterBreaks, 0);
  t.observe(hb(5), 1500);
  assert.is(t.stats.counterBreaks, 1);
  t.resetGap();
  t.observe(hb(6), 9000);
  assert.is(t.stats.maxGapMs, 350);
  t.observeLine("ERR mem page=3");
  assert.is(t.stats.errorLines, 1);
  assert.is(t.stats.count, 5);
});

test.run();
