#!/usr/bin/env python3
"""Writes the seed corpus from the golden captures in zerorpc-protocol.md's appendix.

Usage: fuzz/seeds.py PATH/TO/zerorpc-protocol.md
Each complete hex dump (a message whose frames are all shown) becomes one seed: its last
frame (the event) for wire_codec, and all its frames in the node_message input format
(u16 little-endian length + bytes per frame) for node_message. Messages captured on the
DEALER side get an identity frame in front, as the node's ROUTER would see them.
"""
import pathlib
import re
import sys

FRAME = re.compile(r"^\s+frame (\d+): (\d+) bytes")
HEX = re.compile(r"^\s+[0-9a-f]{4}  ((?:[0-9a-f]{2} ?)+)")
TITLE = re.compile(r"^### (\S+)")


def messages(text):
    """Yields (title, [frame bytes]) for every fully shown message."""
    title, frames, sizes = None, [], []
    in_msg = False
    for line in text.splitlines():
        m = TITLE.match(line)
        if m:
            title = m.group(1).rstrip(".")
            continue
        if re.match(r"^\s+(SENT|RECEIVED)", line):
            if in_msg and frames:
                yield title, frames, sizes
            frames, sizes, in_msg = [], [], True
            continue
        if line.startswith("```") and in_msg:
            if frames:
                yield title, frames, sizes
            frames, sizes, in_msg = [], [], False
            continue
        m = FRAME.match(line)
        if m and in_msg:
            frames.append(bytearray())
            sizes.append(int(m.group(2)))
            continue
        m = HEX.match(line)
        if m and in_msg and frames and "msgpack" not in line:
            frames[-1].extend(bytes.fromhex(m.group(1).replace(" ", "")))


def main():
    text = pathlib.Path(sys.argv[1]).read_text()
    root = pathlib.Path(__file__).resolve().parent / "corpus"
    codec, node = root / "wire_codec", root / "node_message"
    codec.mkdir(parents=True, exist_ok=True)
    node.mkdir(parents=True, exist_ok=True)
    count = 0
    seen = {}
    for title, frames, sizes in messages(text):
        if [len(f) for f in frames] != sizes:
            continue  # a dump with rows omitted
        frames = [bytes(f) for f in frames]
        n = seen[title] = seen.get(title, 0) + 1
        name = f"golden-{title}-{n}"
        (codec / name).write_bytes(frames[-1])
        if frames[0] != b"":
            routed = frames
        else:
            routed = [b"\x00\x6b\x8b\x45\x67"] + frames
        (node / name).write_bytes(b"".join(len(f).to_bytes(2, "little") + f for f in routed))
        count += 1
    print(f"{count} golden messages written to {root}")



def s(text):
    b = text.encode()
    assert len(b) < 32
    return bytes([0xA0 | len(b)]) + b


def event(header, name, args):
    """A zerorpc event: header is a list of (key, encoded value) pairs; args encoded."""
    assert len(header) < 16
    h = bytes([0x80 | len(header)]) + b"".join(s(k) + v for k, v in header)
    return b"\x93" + h + s(name) + args


def bin8(b):
    return b"\xc4" + bytes([len(b)]) + b


def zmesh_seeds():
    """Requests the harness's echo service answers, with zmesh's header keys."""
    mid = bin8(b"0123456789abcdef0123456789abcdef")
    base = [("message_id", mid), ("v", b"\x03"), ("zmesh", b"\x01")]
    return {
        "echo-upper": event(base, "echo.upper", b"\x91" + s("hi")),
        "echo-echo-map": event(base, "echo.echo", b"\x91\x81" + s("k") + b"\x2a"),
        "echo-sleep-deadline": event(
            base + [("zmesh_deadline_ms", b"\x0a")], "echo.sleep", b"\x91\x01"
        ),
        "echo-request-id": event(
            base + [("zmesh_request_id", s("req-1"))], "echo.upper", b"\x91" + s("x")
        ),
        "ping": event(base, "_zerorpc_ping", b"\x90"),
        "stats": event(base, "_zmesh_stats", b"\x90"),
        "cancel": event(base + [("response_to", mid)], "_zmesh_cancel", b"\xc0"),
        "more": event(base + [("response_to", mid)], "_zpc_more", b"\x91\x64"),
    }


def write_zmesh_seeds():
    root = pathlib.Path(__file__).resolve().parent / "corpus"
    for name, ev in zmesh_seeds().items():
        (root / "wire_codec" / name).write_bytes(ev)
        routed = [b"\x00\x6b\x8b\x45\x67", b"", ev]
        (root / "node_message" / name).write_bytes(
            b"".join(len(f).to_bytes(2, "little") + f for f in routed)
        )


if __name__ == "__main__":
    main()
    write_zmesh_seeds()
