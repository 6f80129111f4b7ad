"""A stock zerorpc 0.6.3 Publisher for the events interop tests (tests/events_interop.rs).

Usage: python py_publisher.py

Binds a PUB socket on tcp://127.0.0.1 with a port chosen by the kernel, prints
`READY <endpoint>`, then calls `greet("hi", i)` for i = 0, 1, 2, ... every 10 ms (one
single-frame zerorpc event each, no topic frame), at most 3,000 times. Exits by itself when
its parent process goes away.
"""

import os
import sys

import gevent
import zmq
import zerorpc


def watch_parent(parent):
    while True:
        gevent.sleep(1)
        if os.getppid() != parent:
            os._exit(0)


def main():
    publisher = zerorpc.Publisher()
    publisher.bind("tcp://127.0.0.1:*")
    endpoint = publisher._events._socket.getsockopt(zmq.LAST_ENDPOINT).decode()
    gevent.spawn(watch_parent, os.getppid())
    sys.stdout.write("READY %s\n" % endpoint)
    sys.stdout.flush()
    for i in range(3000):
        publisher.greet("hi", i)
        gevent.sleep(0.01)


if __name__ == "__main__":
    main()
