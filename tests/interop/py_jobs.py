"""Stock zerorpc 0.6.3 on both sides of a zmesh job queue (tests/jobs_interop.rs).

Usage:
    python py_jobs.py worker
        Serves `triple(x)` -> 3 * x and `reject()`, which raises PermanentError, on
        tcp://127.0.0.1 with a kernel-chosen port; prints `READY <endpoint>`, runs until
        killed (or its parent goes away).
    python py_jobs.py submit QUEUE_ENDPOINT
        Submits triple(7) and reject() to the queue's `jobs` service with a stock client,
        fetches both results with jobs.result, and prints one JSON line:
        {"ok": true, "triple": ..., "reject": ...}.
"""

import json
import sys

import zerorpc

from py_server import serve


class PermanentError(Exception):
    """The name tells a zmesh job queue not to retry (docs/JOBS.md)."""


class Worker(object):
    def triple(self, x):
        return 3 * x

    def reject(self):
        raise PermanentError("bad input")


def text(value):
    """msgpack may hand strings back as bytes; the checks compare text."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, dict):
        return dict((text(k), text(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [text(v) for v in value]
    return value


def worker():
    serve(Worker(), "worker")


def submit(queue):
    client = zerorpc.Client(timeout=30)
    client.connect(queue)
    out = {}
    for name, method, args in (("triple", "triple", [7]), ("reject", "reject", [])):
        ack = text(getattr(client, "jobs.submit")(method, args, None))
        outcome = text(getattr(client, "jobs.result")(ack["id"], 10000))
        out[name] = {"ack": ack, "outcome": outcome}
    out["ok"] = True
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker()
    else:
        submit(sys.argv[2])
