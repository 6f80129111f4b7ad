"""A stock zerorpc 0.6.3 Subscriber for the events interop tests (tests/events_interop.rs).

Usage: python py_subscriber.py ENDPOINT COUNT

Connects a zerorpc.Subscriber (which subscribes to everything) to a zmesh publisher and
handles `orders.created(order)` until COUNT events arrived, recording each payload and the
zmesh header keys of its event (through a zerorpc middleware). Prints one JSON line
{"ok": bool, "events": [[order, zmesh_pub, zmesh_seq], ...]} and exits. Gives up after 30 s.
"""

import json
import os
import sys

import gevent
import gevent.event
import zerorpc


class HeaderRecorder(object):
    """zerorpc middleware: sees every event before its method runs."""

    def __init__(self):
        self.headers = []

    def server_before_exec(self, request_event):
        self.headers.append(dict(request_event.header))


def main():
    endpoint, count = sys.argv[1], int(sys.argv[2])
    got = []
    done = gevent.event.Event()
    recorder = HeaderRecorder()

    def created(order):
        header = recorder.headers[-1] if recorder.headers else {}
        got.append([order, header.get("zmesh_pub"), header.get("zmesh_seq")])
        if len(got) >= count:
            done.set()

    context = zerorpc.Context()
    context.register_middleware(recorder)
    sub = zerorpc.Subscriber({"orders.created": created}, context=context)
    sub.connect(endpoint)
    gevent.spawn(sub.run)
    # The connection is lazy: tell the test we are about to be connected.
    sys.stdout.write("SUBSCRIBED\n")
    sys.stdout.flush()
    ok = done.wait(timeout=30)
    sys.stdout.write(json.dumps({"ok": bool(ok), "events": got}) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
