#!/usr/bin/env bash
# The nats-server of the peer comparison's NATS row, on loopback only, in a temp dir of its
# own (tools/jobs-compare/servers.sh with SERVERS_ONLY=nats does the work: it installs
# Debian's nats-server when missing, as root, and runs it directly, not as a service).
#
#   eval "$(tools/peer-compare/nats.sh start)"   # prints export PEER_COMPARE_NATS=nats://...
#   cargo run --release -p zmesh-peer-compare
#   tools/peer-compare/nats.sh stop
set -euo pipefail
servers="$(dirname "$0")/../jobs-compare/servers.sh"
export SERVERS_ONLY=nats SERVERS_NAME=zmesh-peer-compare
case "${1:-}" in
  start) bash "$servers" start | sed 's/^export JOBS_COMPARE_NATS=/export PEER_COMPARE_NATS=/' ;;
  stop | status) bash "$servers" "$1" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
