"""Seeds for fuzz_inotify: python3 native/fuzz/seeds_inotify.py DIR.

Each seed is one control byte (see fuzz_inotify.c: join, a small ring, a split point in
byte 1) and then struct inotify_event records as the kernel writes them (names NUL-padded
to 16 bytes): a file's life (create, modify, close_write, attrib, rename, delete), a
directory made and removed, moves paired and alone, an overflow, and an audit batch (msgpack)
for the actor join. Deterministic: struct.pack and a small msgpack writer of its own.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_OPEN = 0x2, 0x4, 0x8, 0x20
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x400, 0x4000, 0x8000, 0x40000000


def record(wd: int, mask: int, name: bytes = b"", cookie: int = 0) -> bytes:
    padded = name + b"\0" * (-(len(name) + 1) % 16 + 1) if name else b""
    return struct.pack("<iIII", wd, mask, cookie, len(padded)) + padded


def mp_str(s: str) -> bytes:
    b = s.encode()
    return (bytes([0xA0 | len(b)]) if len(b) < 32 else bytes([0xD9, len(b)])) + b


def mp_map(pairs: list[tuple[str, bytes]]) -> bytes:
    return bytes([0x80 | len(pairs)]) + b"".join(mp_str(k) + v for k, v in pairs)


def audit_batch() -> bytes:
    path = lambda n, nt: mp_map([("n", mp_str(n)), ("nt", mp_str(nt))])
    event = mp_map([("t", mp_str("audit")), ("ts", b"\xcf" + struct.pack(">Q", 1_716_000_000_000)),
                    ("pid", b"\xcd" + struct.pack(">H", 4242)), ("uid", b"\x00"),
                    ("auid", b"\xce" + struct.pack(">I", 1000)), ("exe", mp_str("/usr/bin/touch")),
                    ("cwd", mp_str("/w")),
                    ("paths", b"\x92" + path("/w", "PARENT") + path("f", "CREATE"))])
    return b"\x91" + event


def audit_records_batch() -> bytes:
    """An `audit` event as the parser writes a watch rule's syscall: PATH records in `recs`."""
    rec = lambda t, f: mp_map([("type", mp_str(t)), ("f", mp_map(f))])
    event = mp_map([("t", mp_str("audit")), ("ts", b"\xcf" + struct.pack(">Q", 1_716_000_000_000)),
                    ("pid", b"\x07"), ("exe", mp_str("/usr/bin/rm")), ("cwd", mp_str("/")),
                    ("recs", b"\x93" + rec("CWD", [("cwd", mp_str("/"))])
                     + rec("PATH", [("name", mp_str("/w")), ("nametype", mp_str("PARENT"))])
                     + rec("PATH", [("name", mp_str("/w/x")), ("nametype", mp_str("DELETE"))]))])
    return b"\x91" + event


def main(out: Path) -> None:
    life = b"".join([
        record(1, IN_CREATE, b"f"), record(1, IN_MODIFY, b"f"), record(1, IN_CLOSE_WRITE, b"f"),
        record(1, IN_ATTRIB, b"f"), record(1, IN_OPEN, b"f"),
        record(1, IN_MOVED_FROM, b"f", 5), record(2, IN_MOVED_TO, b"g", 5),
        record(2, IN_DELETE, b"g"),
    ])
    dirs = b"".join([
        record(1, IN_CREATE | IN_ISDIR, b"d"), record(1, IN_DELETE | IN_ISDIR, b"d"),
        record(2, IN_DELETE_SELF), record(2, IN_IGNORED), record(2, IN_CREATE, b"late"),
        record(3, IN_CREATE, b"outside"), record(-1, IN_Q_OVERFLOW),
    ])
    alone = b"".join([
        record(1, IN_MOVED_FROM, b"out", 9), record(1, IN_CREATE, b"x"),
        record(2, IN_MOVED_TO, b"in", 10), record(1, IN_MOVED_FROM, b"last", 11),
    ])
    seeds = {
        "life": bytes([0, 0]) + life,
        "life-joined": bytes([1, 0]) + life,
        "life-split": bytes([5, 40]) + life,
        "dirs": bytes([2, 0]) + dirs,
        "alone": bytes([3, 0]) + alone,
        "audit": bytes([1, 0]) + audit_batch(),
        "audit-recs": bytes([1, 0]) + audit_records_batch(),
        "cut": bytes([0, 0]) + life[:-7],
    }
    for name, data in seeds.items():
        (out / name).write_bytes(data)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
