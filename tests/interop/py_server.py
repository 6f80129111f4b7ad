"""A stock zerorpc 0.6.3 server for the interop tests (tests/interop.rs).

Usage: python py_server.py

Binds a ROUTER on tcp://127.0.0.1 with a port chosen by the kernel, prints one line
`READY <endpoint>` on stdout once it is serving, and runs until killed. It also exits by
itself when its parent process goes away, so an aborted test run leaves nothing behind.

Methods (default heartbeat, 5 s):
    hello(name)       -> "Hello, <name>"
    boom(msg)         -> raises ValueError(msg)
    count(n)          -> @zerorpc.stream of the integers 0..n-1
    slow(seconds)     -> gevent.sleep(seconds), then returns seconds
"""

import os
import sys

import gevent
import zmq
import zerorpc


class Interop(object):
    def hello(self, name):
        """Return a greeting."""
        return "Hello, %s" % name

    def boom(self, msg):
        """Raise ValueError(msg)."""
        raise ValueError(msg)

    @zerorpc.stream
    def count(self, n):
        """Stream the integers 0..n-1."""
        return iter(range(n))

    def slow(self, seconds):
        """Sleep cooperatively for `seconds`, then return it."""
        gevent.sleep(seconds)
        return seconds


def watch_parent(parent):
    while True:
        gevent.sleep(1)
        if os.getppid() != parent:
            os._exit(0)


def serve(methods, name):
    """Serves `methods` on a kernel-chosen port, announcing `READY <endpoint>` (also used by
    py_jobs.py)."""
    server = zerorpc.Server(methods, name=name)
    server.bind("tcp://127.0.0.1:*")
    endpoint = server._events._socket.getsockopt(zmq.LAST_ENDPOINT).decode()
    gevent.spawn(watch_parent, os.getppid())
    # The socket is bound, so connecting peers are queued by libzmq even before run() starts
    # its accept loop: the endpoint can be announced now.
    sys.stdout.write("READY %s\n" % endpoint)
    sys.stdout.flush()
    server.run()


def main():
    serve(Interop(), "interop")


if __name__ == "__main__":
    main()
