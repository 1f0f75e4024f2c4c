// Choosing the channel path (pure policy), its proto conversions and the CLI flags: what is
// chosen for each request and round trip, and clear errors for bad or contradictory values.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { ChannelCompression, ChannelPath } from "../../gen/vmhop/v1/page.js";
import { ServiceError } from "../../services/common/errors.js";
import {
  checkPathRequest,
  choosePath,
  NEAR_LINK_RTT_MS,
  PathRequestError,
  parseChannelPath,
  parseCompression,
} from "../../services/page-server/channel/path-policy.js";
import { channelPathFromProto, compressionFromProto } from "../../services/page-server/grpc/convert.js";
import { test } from "../helpers/uvu.js";

const near = NEAR_LINK_RTT_MS / 20;
const far = 20;

test("auto: handoff on a near link, relay with the urgent lane and compression auto on a far one", () => {
  assert.equal(choosePath({ postcopy: true }, near), {
    path: "handoff",
    compression: "off",
    preempt: false,
    reason: `rtt ${near.toFixed(2)} ms < ${NEAR_LINK_RTT_MS} ms`,
  });
  assert.equal(choosePath({ postcopy: true }, far), {
    path: "relay",
    compression: "auto",
    preempt: true,
    reason: `rtt 20.00 ms >= ${NEAR_LINK_RTT_MS} ms`,
  });
  // Pre-copy never switches: no urgent lane, compression still.
  assert.equal(choosePath({ postcopy: false }, far).preempt, false);
  // Compression "auto" does not stop a handoff (a near link is never slow); "on" needs the relay.
  assert.is(choosePath({ compression: "auto", postcopy: true }, near).path, "handoff");
  assert.is(choosePath({ compression: "on", postcopy: true }, near).path, "relay");
  assert.is(choosePath({ preempt: true, postcopy: true }, near).path, "relay");
  // Explicit settings on a far link win over the path's defaults.
  assert.equal(choosePath({ compression: "off", preempt: false, postcopy: true }, far), {
    path: "relay",
    compression: "off",
    preempt: false,
    reason: `rtt 20.00 ms >= ${NEAR_LINK_RTT_MS} ms`,
  });
  assert.is(choosePath({ postcopy: true }, undefined).path, "relay");
});

test("explicit paths are honoured whatever the round trip", () => {
  assert.equal(choosePath({ path: "handoff", postcopy: true }, far), {
    path: "handoff",
    compression: "off",
    preempt: false,
    reason: "requested; rtt 20.00 ms",
  });
  assert.equal(choosePath({ path: "handoff", compression: "auto", postcopy: true }, far).compression, "off");
  const relay = choosePath({ path: "relay", postcopy: true }, near);
  assert.equal([relay.path, relay.compression, relay.preempt], ["relay", "auto", true]);
  assert.is(choosePath({ path: "relay", compression: "on", postcopy: true }, near).compression, "on");
});

test("bad and contradictory requests fail clearly", () => {
  const bad = (r: Parameters<typeof checkPathRequest>[0], re: RegExp) =>
    assert.throws(
      () => checkPathRequest(r),
      (e: unknown) => e instanceof PathRequestError && re.test(e.message),
    );
  bad(
    { path: "tunnel" as "auto", postcopy: true },
    /channel path must be auto, handoff or relay, not "tunnel"/,
  );
  bad({ compression: "max" as "on", postcopy: true }, /compression must be off, on or auto, not "max"/);
  bad({ path: "handoff", compression: "on", postcopy: true }, /compression on needs the relay/);
  bad({ path: "handoff", preempt: true, postcopy: true }, /preempt needs the relay/);
  assert.is(parseChannelPath("relay"), "relay");
  assert.is(parseCompression("off"), "off");
  assert.throws(() => parseCompression(""), /not ""/);
});

test("proto: unset leaves the defaults, the deprecated compress bool still forces on, bad values are INVALID_ARGUMENT", () => {
  assert.is(channelPathFromProto(ChannelPath.CHANNEL_PATH_UNSPECIFIED), undefined);
  assert.is(channelPathFromProto(ChannelPath.CHANNEL_PATH_AUTO), "auto");
  assert.is(channelPathFromProto(ChannelPath.CHANNEL_PATH_HANDOFF), "handoff");
  assert.is(channelPathFromProto(ChannelPath.CHANNEL_PATH_RELAY), "relay");
  assert.is(compressionFromProto(ChannelCompression.CHANNEL_COMPRESSION_UNSPECIFIED, false), undefined);
  assert.is(compressionFromProto(ChannelCompression.CHANNEL_COMPRESSION_OFF, false), "off");
  assert.is(compressionFromProto(ChannelCompression.CHANNEL_COMPRESSION_AUTO, false), "auto");
  assert.is(compressionFromProto(ChannelCompression.CHANNEL_COMPRESSION_UNSPECIFIED, true), "on");
  assert.is(compressionFromProto(ChannelCompression.CHANNEL_COMPRESSION_ON, true), "on");
  const invalid = (fn: () => unknown, re: RegExp) =>
    assert.throws(
      fn,
      (e: unknown) => e instanceof ServiceError && e.kind === "invalid" && re.test(e.message),
    );
  invalid(() => channelPathFromProto(9 as ChannelPath), /channel_path 9 is not one of AUTO, HANDOFF, RELAY/);
  invalid(
    () => compressionFromProto(7 as ChannelCompression, false),
    /compression 7 is not one of OFF, ON, AUTO/,
  );
  invalid(
    () => compressionFromProto(ChannelCompression.CHANNEL_COMPRESSION_OFF, true),
    /contradicts compression CHANNEL_COMPRESSION_OFF/,
  );
});

test("vmhop page serve: bad --channel-path / --compression values and contradictions exit 2 with the reason", () => {
  const bin = join(new URL("../..", import.meta.url).pathname, "bin/vmhop.js");
  for (const [args, re] of [
    [["--channel-path", "tunnel"], /channel path must be auto, handoff or relay, not "tunnel"/],
    [["--compression", "max"], /compression must be off, on or auto, not "max"/],
    [["--channel-path", "handoff", "--compression", "on"], /compression on needs the relay/],
    [["--channel-path", "handoff", "--preempt"], /preempt needs the relay/],
  ] as const) {
    const r = spawnSync(bin, ["page", "serve", ...args], { encoding: "utf8" });
    assert.is(r.status, 2, args.join(" "));
    assert.match(r.stderr, re);
  }
  const help = spawnSync(bin, ["page", "serve", "--help"], { encoding: "utf8" });
  assert.match(help.stdout, /--channel-path/);
});

test.run();
