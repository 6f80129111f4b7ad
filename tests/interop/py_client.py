"""A stock zerorpc 0.6.3 client for the interop tests (tests/interop.rs).

Usage: python py_client.py ENDPOINT CHECK

Performs one named check against a zmesh node serving the echo service (exported both as
`echo.<method>` and unprefixed), with the stock client's default heartbeat (5 s). Prints one
JSON line `{"check": ..., "ok": true|false, ...}` on stdout and exits 0 on success, 1 on failure.
"""

import json
import sys
import traceback

import gevent
import zerorpc


class CheckFailed(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise CheckFailed(what)


def expect_remote_error(call, name, msg):
    try:
        result = call()
    except zerorpc.RemoteError as e:
        expect(e.name == name, "error name %r, expected %r" % (e.name, name))
        expect(e.msg == msg, "error message %r, expected %r" % (e.msg, msg))
        return {"name": e.name, "msg": e.msg}
    raise CheckFailed("expected RemoteError %s, got result %r" % (name, result))


def check_upper(c):
    unprefixed = c.upper("hi")
    prefixed = c("echo.upper", "hi")
    expect(unprefixed == "HI", "upper('hi') returned %r" % (unprefixed,))
    expect(prefixed == "HI", "echo.upper('hi') returned %r" % (prefixed,))
    return {"upper": unprefixed, "echo.upper": prefixed}


def check_echo(c):
    value = {"s": "text", "b": b"\x00\xff", "l": [1, -2, 2.5, None, True], "m": {"k": "v"}}
    back = c.echo(value)
    expect(back == value, "echo returned %r, expected %r" % (back, value))
    size = c("echo.size", b"\x00" * 1000)
    expect(size == 1000, "echo.size(1000 bytes) returned %r" % (size,))
    return {"echo": "equal", "size": size}


def check_fail(c):
    return expect_remote_error(lambda: c.fail("x"), "EchoError", "x")


def check_unknown(c):
    return expect_remote_error(lambda: c("no_such_method", 1), "NameError", "no_such_method")


def check_unknown_via_device(c):
    # A proxy device keeps the name a stock client expects and says why in the message.
    return expect_remote_error(
        lambda: c("no_such_method", 1),
        "NameError",
        "no worker connected to the device serves no_such_method",
    )


def check_stream_slow(c):
    n = 1000
    got = []
    for item in c.count(n):
        got.append(item)
        # A slow consumer: the receive greenlet keeps queueing what the server sends while
        # this one sleeps, so a server that ignored `_zpc_more` credit would overflow the
        # client's 100-slot queue.
        gevent.sleep(0.002)
    expect(len(got) == n, "received %d items, expected %d" % (len(got), n))
    expect(got == list(range(n)), "items out of order or wrong")
    return {"items": len(got), "first": got[0], "last": got[-1]}


def check_long_call(c):
    # 20 s with the default 5 s heartbeat: the stock client declares the server lost after
    # ~15 s unless the node heartbeats; the timeout (first reply) is well beyond 20 s.
    result = c.sleep(20000, timeout=40)
    expect(result == 20000, "sleep(20000) returned %r" % (result,))
    return {"sleep": result}


def check_list(c):
    methods = c._zerorpc_list()
    expect(isinstance(methods, list), "_zerorpc_list returned %r" % (methods,))
    for name in ["upper", "echo.upper", "count", "echo.count", "fail", "echo.fail"]:
        expect(name in methods, "%r missing from _zerorpc_list %r" % (name, methods))
    expect(methods == sorted(methods), "_zerorpc_list not sorted: %r" % (methods,))
    expect(not any(m.startswith("_") for m in methods), "private names listed: %r" % (methods,))
    return {"methods": methods}


def check_introspection(c):
    ping = c._zerorpc_ping()
    expect(ping == ["pong", "echo"], "_zerorpc_ping returned %r" % (ping,))
    name = c._zerorpc_name()
    expect(name == "echo", "_zerorpc_name returned %r" % (name,))
    doc = c._zerorpc_help("echo.upper")
    expect(isinstance(doc, str) and doc, "_zerorpc_help('echo.upper') returned %r" % (doc,))
    return {"ping": ping, "name": name, "help": doc}


def check_unauthenticated(c):
    # A keyed endpoint refuses a stock client with a clear RemoteError (tests/trust.rs).
    try:
        result = c.upper("hi")
    except zerorpc.RemoteError as e:
        expect(e.name == "Unauthenticated", "error name %r" % (e.name,))
        return {"name": e.name, "msg": e.msg}
    raise CheckFailed("expected RemoteError Unauthenticated, got result %r" % (result,))


CHECKS = {
    "upper": check_upper,
    "echo": check_echo,
    "fail": check_fail,
    "unknown": check_unknown,
    "unknown_via_device": check_unknown_via_device,
    "unauthenticated": check_unauthenticated,
    "stream_slow": check_stream_slow,
    "long_call": check_long_call,
    "list": check_list,
    "introspection": check_introspection,
}


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in CHECKS:
        sys.stderr.write("usage: py_client.py ENDPOINT {%s}\n" % "|".join(sorted(CHECKS)))
        return 2
    endpoint, check = sys.argv[1], sys.argv[2]
    client = zerorpc.Client(timeout=10, heartbeat=5)
    client.connect(endpoint)
    try:
        detail = CHECKS[check](client)
        out = {"check": check, "ok": True, "detail": detail}
        code = 0
    except Exception as e:  # report every failure as a JSON line, with the traceback on stderr
        traceback.print_exc()
        out = {"check": check, "ok": False, "error": "%s: %s" % (type(e).__name__, e)}
        code = 1
    finally:
        client.close()
    sys.stdout.write(json.dumps(out, default=repr) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
