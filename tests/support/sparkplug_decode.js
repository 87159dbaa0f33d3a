// Decodes Sparkplug B payloads with Eclipse Tahu's `sparkplug-payload` (npm),
// for tests/support/sparkplug_host.py: a second implementation the project
// did not write. One request per stdin line, one JSON answer per stdout line.
//
// Request: `<base64 payload>` or `<base64 payload> <JSON hints>`, where the
// hints are `{"alias": {"<alias>": <datatype>}, "name": {"<name>": <datatype>}}`
// from the matching BIRTH: Tahu's decoder needs each metric's datatype, which
// the spec says DATA and CMD metrics should leave out, so a metric without one
// gets it from the hints (and `"typeFromBirth": true`) before Tahu decodes it.
// Answer: `{"ok": <decoded payload>}` or `{"error": "<message>"}`.
//
// 64-bit integers (Long) come out as JSON numbers when they fit a double
// exactly (|v| <= 2^53 - 1), else as decimal strings; bytes as hex strings;
// non-finite floats as "NaN", "Infinity", "-Infinity".
//
// The module comes from SLUICE_TEST_NODE_MODULES or target/test-node/node_modules
// (scripts/test.sh installs it there).
"use strict";
const path = require("path");
const readline = require("readline");

const modules = process.env.SLUICE_TEST_NODE_MODULES
  || path.join(__dirname, "..", "..", "target", "test-node", "node_modules");
let tahu, Payload;
try {
  tahu = require(path.join(modules, "sparkplug-payload")).get("spBv1.0");
  Payload = require(path.join(modules, "sparkplug-payload", "lib", "sparkplugPayloadProto"))
    .org.eclipse.tahu.protobuf.Payload;
} catch (e) {
  process.stderr.write(`sparkplug-payload not found in ${modules} (scripts/test.sh installs it): ${e.message}\n`);
  process.exit(1);
}

const isLong = (v) => v !== null && typeof v === "object"
  && typeof v.low === "number" && typeof v.high === "number" && typeof v.unsigned === "boolean";

function toJson(key, value) {
  const raw = this[key];
  if (raw instanceof Uint8Array) return Buffer.from(raw).toString("hex");
  if (isLong(raw)) {
    let big = (BigInt(raw.high >>> 0) << 32n) | BigInt(raw.low >>> 0);
    if (!raw.unsigned && raw.high < 0) big -= 1n << 64n;
    return big >= -9007199254740991n && big <= 9007199254740991n ? Number(big) : big.toString();
  }
  if (typeof raw === "number" && !Number.isFinite(raw)) return String(raw);
  return value;
}

function decode(line) {
  const space = line.indexOf(" ");
  const b64 = space < 0 ? line : line.slice(0, space);
  const hintText = space < 0 ? "" : line.slice(space + 1);
  let bytes = Buffer.from(b64, "base64");
  const filled = new Set();
  if (hintText) {
    const hints = JSON.parse(hintText);
    const message = Payload.decode(bytes);
    message.metrics.forEach((m, i) => {
      if (m.datatype) return;
      // Absent fields read as defaults from the prototype: ask hasOwnProperty.
      const name = m.hasOwnProperty("name") ? hints.name[m.name] : undefined;
      const type = name ?? (m.hasOwnProperty("alias") ? hints.alias[String(m.alias)] : undefined);
      if (type) { m.datatype = type; filled.add(i); }
    });
    if (filled.size) bytes = Payload.encode(message).finish();
  }
  const payload = tahu.decodePayload(bytes);
  for (const i of filled) payload.metrics[i].typeFromBirth = true;
  return payload;
}

const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on("line", (line) => {
  let answer;
  try {
    answer = JSON.stringify({ ok: decode(line.trim()) }, toJson);
  } catch (e) {
    answer = JSON.stringify({ error: String(e && e.message || e) });
  }
  process.stdout.write(answer + "\n");
});
