// A stock zerorpc-node server for zmesh clients. Usage: node server.js ENDPOINT
// Prints "ready ENDPOINT" once bound.
"use strict";
const zerorpc = require("zerorpc");

const server = new zerorpc.Server({
  upper: function (s, reply) {
    reply(null, s.toUpperCase());
  },
  echo: function (x, reply) {
    reply(null, x);
  },
  size: function (x, reply) {
    reply(null, x.length);
  },
  boom: function (message, reply) {
    const err = new Error(message);
    err.name = "NodeBoom";
    reply(err);
  },
  count: function (n, reply) {
    for (let i = 0; i < n; i++) reply(null, i, true);
    reply(null, undefined, false);
  },
  sleep: function (ms, reply) {
    setTimeout(() => reply(null, ms), ms);
  },
});
server.on("error", (err) => process.stderr.write("server error: " + err + "\n"));
server.bind(process.argv[2]);
process.stdout.write("ready " + process.argv[2] + "\n");
