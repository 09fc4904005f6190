"""Seeds for fuzz_utmp: python3 native/fuzz/seeds_utmp.py DIR.

Each seed is two control bytes (see fuzz_utmp.c: kind, layout and remembered logins; the
visibility step) and then records in glibc's struct utmp layouts, as a device writes them:
a boot with logins and logouts over ssh and a console, failed logins, a current-sessions
file, and records with full-length fields and non-UTF-8 names. Deterministic: struct.pack,
nothing read from this machine.
"""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

FMT = {384: "<hxxi32s4s32s256shhiIi16s20x", 400: "<hxxi32s4s32s256shhqqq16s20x4x"}
T0 = 1_716_000_000
KIND = {"wtmp": 0, "btmp": 1, "utmp": 2}
LAYOUT = {0: 0, 384: 1, 400: 2}


def rec(size: int, ut_type: int, pid: int = 0, line: bytes = b"", ut_id: bytes = b"",
        user: bytes = b"", host: bytes = b"", term: int = 0, exit: int = 0, session: int = 0,
        sec: int = 0, usec: int = 0, addr: bytes = b"") -> bytes:
    return struct.pack(FMT[size], ut_type, pid, line, ut_id, user, host, term, exit, session,
                       sec, usec, addr.ljust(16, b"\0"))


def control(kind: str, layout: int, sessions: int, step: int) -> bytes:
    return bytes([KIND[kind] | LAYOUT[layout] << 2 | (sessions - 1) << 4, step])


def history(size: int) -> bytes:
    v4 = socket.inet_pton(socket.AF_INET, "192.168.1.20")
    v6 = socket.inet_pton(socket.AF_INET6, "fd00::1:2")
    return b"".join([
        rec(size, 2, line=b"~", ut_id=b"~~", user=b"reboot", host=b"6.1.0-rpi7", sec=T0),
        rec(size, 1, pid=ord("5") | ord("N") << 8, line=b"~", ut_id=b"~~", user=b"runlevel",
            host=b"6.1.0-rpi7", sec=T0 + 3),
        rec(size, 5, pid=410, line=b"ttyS0", ut_id=b"tyS0", sec=T0 + 4),
        rec(size, 6, pid=410, line=b"ttyS0", ut_id=b"tyS0", user=b"LOGIN", sec=T0 + 4),
        rec(size, 7, pid=410, line=b"ttyS0", ut_id=b"tyS0", user=b"root", session=410,
            sec=T0 + 30, usec=120_000),
        rec(size, 7, pid=900, line=b"pts/0", ut_id=b"ts/0", user=b"pi", host=b"192.168.1.20",
            session=900, sec=T0 + 60, usec=5, addr=v4),
        rec(size, 7, pid=950, line=b"pts/1", ut_id=b"ts/1", user=b"admin", host=b"fd00::1:2",
            session=950, sec=T0 + 61, addr=v6),
        rec(size, 8, pid=900, line=b"pts/0", ut_id=b"ts/0", sec=T0 + 400, usec=999_999),
        rec(size, 3, line=b"|", user=b"date", sec=T0 + 500),
        rec(size, 4, line=b"}", user=b"date", sec=T0 + 499),
        rec(size, 8, pid=950, line=b"pts/1", ut_id=b"ts/1", term=15, exit=1, sec=T0 + 600),
        rec(size, 1, pid=ord("0") | ord("5") << 8, line=b"~~", ut_id=b"~~", user=b"shutdown",
            host=b"6.1.0-rpi7", sec=T0 + 700),
    ])


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    seeds = {
        "wtmp-384": control("wtmp", 0, 4, 23) + history(384),
        "wtmp-400": control("wtmp", 0, 4, 40) + history(400),
        "wtmp-384-explicit-1-session": control("wtmp", 384, 1, 0) + history(384),
        "wtmp-400-explicit": control("wtmp", 400, 2, 255) + history(400),
        "btmp": control("btmp", 0, 1, 7) + b"".join(
            rec(384, 6, pid=3000 + i, line=b"ssh:notty", user=name, host=b"203.0.113.5",
                sec=T0 + i, addr=socket.inet_pton(socket.AF_INET, "203.0.113.5"))
            for i, name in enumerate([b"admin", b"ubnt", b"root", b"oracle"])),
        "utmp": control("utmp", 0, 2, 24) + b"".join([
            rec(384, 2, line=b"~", ut_id=b"~~", user=b"reboot", host=b"6.1.0", sec=T0),
            rec(384, 1, pid=ord("3"), line=b"~", ut_id=b"~~", user=b"runlevel", sec=T0),
            rec(384, 6, pid=410, line=b"ttyS0", ut_id=b"tyS0", user=b"LOGIN", sec=T0 + 4),
            rec(384, 7, pid=900, line=b"pts/0", ut_id=b"ts/0", user=b"pi", sec=T0 + 60),
            rec(384, 8, pid=950, line=b"pts/1", ut_id=b"ts/1", sec=T0 + 600),
        ]),
        "odd-fields": control("wtmp", 0, 3, 11) + b"".join([
            rec(384, 7, pid=-1, line=b"l" * 32, ut_id=b"iiii", user=b"u" * 32,
                host=b"h" * 256, session=-7, sec=0xFFFFFFFF, usec=999_999,
                addr=b"\xff" * 16),
            rec(384, 7, pid=1, line=b"tty\xff", user=b"\xc3\x28bad", sec=T0),
            rec(384, 8, line=b"tty\xff", sec=T0 - 10, usec=-4),
            rec(384, 9, sec=T0), rec(384, 0), rec(384, 42, sec=T0),
        ]) + b"\x07\x00\x00\x00partial",
    }
    for name, data in seeds.items():
        (out / name).write_bytes(data)


if __name__ == "__main__":
    main()
