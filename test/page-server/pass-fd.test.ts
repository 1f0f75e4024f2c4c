// The SCM_RIGHTS control message, byte by byte (Linux x86_64/arm64 layout).
import * as assert from "uvu/assert";
import { encodeRightsCmsg } from "../../services/page-server/qmp/pass-fd.js";
import { test } from "../helpers/uvu.js";

test("one fd: 16-byte header, the fd, padded to 24 bytes (CMSG_SPACE)", () => {
  const b = encodeRightsCmsg([7]);
  assert.is(b.length, 24);
  assert.is(b.readBigUInt64LE(0), 20n); // CMSG_LEN(4)
  assert.is(b.readInt32LE(8), 1); // SOL_SOCKET
  assert.is(b.readInt32LE(12), 1); // SCM_RIGHTS
  assert.is(b.readInt32LE(16), 7);
  assert.is(b.readInt32LE(20), 0);
});

test("two fds fill the padding", () => {
  const b = encodeRightsCmsg([3, 9]);
  assert.is(b.length, 24);
  assert.is(b.readBigUInt64LE(0), 24n);
  assert.equal([b.readInt32LE(16), b.readInt32LE(20)], [3, 9]);
});

test("no fd is an error", () => {
  assert.throws(() => encodeRightsCmsg([]));
});

test.run();
