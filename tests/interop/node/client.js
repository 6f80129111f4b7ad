// A stock zerorpc-node client running the interop cases against ENDPOINT, one JSON line per
// case: {"case": NAME, "ok": VALUE} or {"case": NAME, "err": {"name", "message"}}; bytes
// print as {"base64": "..."}. Usage: node client.js ENDPOINT [CASE...]
"use strict";
const zerorpc = require("zerorpc");

const endpoint = process.argv[2];
const only = process.argv.slice(3);

function show(value) {
  if (Buffer.isBuffer(value)) return { base64: value.toString("base64") };
  if (Array.isArray(value)) return value.map(show);
  return value;
}

function print(name, err, value) {
  const line = err
    ? { case: name, err: { name: err.name, message: err.message } }
    : { case: name, ok: show(value) };
  process.stdout.write(JSON.stringify(line) + "\n");
}

// [name, timeout seconds, method, args, streaming]
const CASES = [
  ["values", 10, "echo.echo", [[1, -2, 2.5, true, null, "s", { k: "v" }]], false],
  ["unicode", 10, "echo.upper", ["héllo wörld ✓ 日本"], false],
  ["binary", 10, "echo.echo", [Buffer.from([0, 1, 254, 255])], false],
  ["large", 20, "echo.size", ["x".repeat(4 * 1024 * 1024)], false],
  ["error", 10, "echo.fail", ["boom from node"], false],
  ["stream", 10, "echo.count", [5], true],
  ["unknown", 10, "echo.nothing_here", [], false],
  ["inspect", 10, "_zerorpc_inspect", [], false],
  ["heartbeats", 40, "echo.sleep", [20000], false],
  ["timeout", 1, "echo.sleep", [30000], false],
];

function run(index) {
  while (index < CASES.length && only.length && !only.includes(CASES[index][0])) index++;
  if (index >= CASES.length) {
    process.exit(0);
  }
  const [name, timeout, method, args, streaming] = CASES[index];
  const client = new zerorpc.Client({ timeout });
  client.connect(endpoint);
  const items = [];
  let done = false;
  const finish = (err, value) => {
    if (done) return;
    done = true;
    print(name, err, value);
    client.close();
    run(index + 1);
  };
  client.invoke(method, ...args, (err, res, more) => {
    if (err) return finish(err);
    if (!streaming) return finish(null, res);
    if (res !== undefined) items.push(res);
    if (!more) finish(null, items);
  });
}

run(0);
