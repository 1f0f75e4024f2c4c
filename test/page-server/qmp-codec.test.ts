import * as assert from "uvu/assert";
import {
  decodeChunk,
  encodeCommand,
  parseMessage,
  QmpProtocolError,
  splitLines,
} from "../../services/page-server/qmp/codec.js";
import { test } from "../helpers/uvu.js";

test("encodeCommand writes one JSON line with execute, arguments and id", () => {
  const b = encodeCommand("migrate", { uri: "tcp:1.2.3.4:5" }, "vmhop-7");
  const s = b.toString();
  assert.ok(s.endsWith("\n"));
  assert.is(s.indexOf("\n"), s.length - 1);
  assert.equal(JSON.parse(s), { execute: "migrate", arguments: { uri: "tcp:1.2.3.4:5" }, id: "vmhop-7" });
  assert.equal(JSON.parse(encodeCommand("migrate-recover", { uri: "u" }, "r", true).toString()), {
    "exec-oob": "migrate-recover",
    arguments: { uri: "u" },
    id: "r",
  });
  assert.equal(JSON.parse(encodeCommand("query-status", undefined, "x").toString()), {
    execute: "query-status",
    id: "x",
  });
});

test("splitLines keeps an incomplete tail and strips CR", () => {
  const { lines, rest } = splitLines(Buffer.from('{"a":1}\r\n\r\n{"b":2}\r\n{"c"'));
  assert.equal(lines, ['{"a":1}', '{"b":2}']);
  assert.is(rest.toString(), '{"c"');
});

test("decodeChunk reassembles a message split across chunks, byte by byte", () => {
  const wire = Buffer.from('{"return": {"status": "running", "running": true}, "id": "vmhop-1"}\r\n');
  let pending: Buffer = Buffer.alloc(0);
  const got = [];
  for (let i = 0; i < wire.length; i++) {
    const r = decodeChunk(pending, wire.subarray(i, i + 1));
    pending = r.rest;
    got.push(...r.messages);
    assert.is(r.errors.length, 0);
    if (i < wire.length - 1) assert.is(r.messages.length, 0);
  }
  assert.equal(got, [{ kind: "return", id: "vmhop-1", value: { status: "running", running: true } }]);
  assert.is(pending.length, 0);
});

test("decodeChunk handles several messages in one chunk and a multibyte char split", () => {
  const text =
    '{"event":"STOP","data":{},"timestamp":{"seconds":1,"microseconds":2}}\r\n{"return":"é","id":"a"}\r\n';
  const wire = Buffer.from(text);
  const cut = wire.indexOf(0xc3) + 1; // inside the two-byte "é"
  const a = decodeChunk(Buffer.alloc(0), wire.subarray(0, cut));
  const b = decodeChunk(a.rest, wire.subarray(cut));
  assert.equal(
    a.messages.map((m) => m.kind),
    ["event"],
  );
  assert.equal(b.messages, [{ kind: "return", id: "a", value: "é" }]);
});

test("parseMessage: greeting, error, event", () => {
  const g = parseMessage(
    '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "x"}, "capabilities": ["oob"]}}',
  );
  assert.is(g.kind, "greeting");
  if (g.kind === "greeting") {
    assert.is(g.version.qemu.major, 7);
    assert.equal(g.capabilities, ["oob"]);
  }
  const e = parseMessage(
    '{"id":"vmhop-3","error":{"class":"CommandNotFound","desc":"The command nope has not been found"}}',
  );
  assert.equal(e, {
    kind: "error",
    id: "vmhop-3",
    errorClass: "CommandNotFound",
    desc: "The command nope has not been found",
  });
  const ev = parseMessage('{"timestamp":{"seconds":5,"microseconds":6},"event":"RESUME"}');
  assert.equal(ev, { kind: "event", event: "RESUME", data: {}, timestamp: { seconds: 5, microseconds: 6 } });
});

test("parseMessage rejects bad JSON and unknown shapes with QmpProtocolError", () => {
  for (const bad of ['{"return": ', "[1,2]", "42", '{"hello":"world"}']) {
    try {
      parseMessage(bad);
      assert.unreachable(`accepted ${bad}`);
    } catch (err) {
      assert.instance(err, QmpProtocolError);
      assert.is((err as QmpProtocolError).line, bad);
    }
  }
});

test("decodeChunk reports a bad line and keeps decoding the following ones", () => {
  const r = decodeChunk(Buffer.alloc(0), Buffer.from('garbage{\r\n{"return":{},"id":"b"}\r\n'));
  assert.is(r.errors.length, 1);
  assert.match(r.errors[0].message, /bad JSON/);
  assert.equal(r.messages, [{ kind: "return", id: "b", value: {} }]);
});

test.run();
