#!/usr/bin/env bash
# Builds a Python virtual environment with stock zerorpc and pyzmq, pinned to versions verified
# to work together on Python 3.11, from binary wheels only (no compiler needed).
#   bash zerorpc-venv.sh DIR      -> creates DIR (default: ./.venv-zerorpc) and prints versions
# Then use DIR/bin/python to run Python peers in interop tests.
# Mirrors shared/interop/zerorpc-venv.sh so a fresh clone outside the workplace can build the venv.
set -euo pipefail
VENV="${1:-.venv-zerorpc}"
PYTHON="${PYTHON:-python3}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import zerorpc, zmq, msgpack' 2>/dev/null; then
  echo "zerorpc venv already present at $VENV"; exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    zerorpc==0.6.3 gevent==26.9.0 greenlet==3.5.6 msgpack==1.2.4 pyzmq==27.3.0 \
    future==1.0.0 zope.event==6.2 zope.interface==8.7
"$VENV/bin/python" -c 'import zmq, msgpack, gevent, zerorpc; print("zerorpc venv ready: libzmq", zmq.zmq_version(), "pyzmq", zmq.__version__, "msgpack", msgpack.version, "gevent", gevent.__version__)'
