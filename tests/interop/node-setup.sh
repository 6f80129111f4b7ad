#!/usr/bin/env bash
# Installs stock zerorpc-node (tests/interop/node/package-lock.json) into
# tests/interop/node/node_modules for tests/interop_node.rs and the CLI's node tests.
# Needs node, npm and the system libzmq (Debian: nodejs npm libzmq3-dev); zeromq 5.3.1's
# native binding is built against that libzmq (zerorpc 0.9.8's own zeromq ^4 pin no longer
# builds on current Node, hence the override in package.json).
set -euo pipefail
cd "$(dirname "$0")/node"
# Test binaries that start at once would otherwise run npm ci in the same folder together.
exec 9>"${TMPDIR:-/tmp}/zmesh-node-setup.lock"
flock 9
if node -e 'require("zerorpc")' 2>/dev/null; then
  exit 0
fi
export npm_config_zmq_external=true
npm ci --no-audit --no-fund --foreground-scripts
node -e 'require("zerorpc")'
