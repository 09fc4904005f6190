"""native/fuzz/seeds_cn_proc.py DIR: seeds for fuzz_cn_proc, built with struct.pack in the
kernel's wire layout (nlmsghdr + cn_msg + struct proc_event): one datagram of each event
type, the old (pre-4.18) short exit and coredump, an ack, several messages in one buffer with
per-CPU sequence gaps, and a few broken ones. The first byte of each seed is the harness's
option byte (bit 0 enrich, bit 1 threads, bit 2 tiny argv bounds)."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

NLMSG_DONE = 3
FORK, EXEC, UID, GID, SID, PTRACE, COMM = 1, 2, 4, 0x40, 0x80, 0x100, 0x200
COREDUMP, EXIT = 0x40000000, 0x80000000
TS = 123_456_789_000  # a fixed monotonic timestamp: seeds are deterministic


def message(what: int, data: bytes, cpu: int = 0, seq: int = 0, union: int = 24) -> bytes:
    event = struct.pack("=IIQ", what, cpu, TS) + data.ljust(union, b"\0")
    cn = struct.pack("=IIIIHH", 1, 1, seq, 0, len(event), 0) + event
    return struct.pack("=IHHII", 16 + len(cn), NLMSG_DONE, 0, 0, 0) + cn


def seeds() -> dict[str, bytes]:
    # pid 1 exists everywhere (enrichment reads /proc/1); 4194000 almost never does.
    out = {
        "fork": message(FORK, struct.pack("=iiii", 1, 1, 4194000, 4194000), seq=1),
        "fork-thread": message(FORK, struct.pack("=iiii", 300, 300, 301, 300), seq=2),
        "exec-init": message(EXEC, struct.pack("=ii", 1, 1), seq=3),
        "exec-absent": message(EXEC, struct.pack("=ii", 4194000, 4194000), seq=4),
        "uid": message(UID, struct.pack("=iiII", 300, 300, 65534, 65534), seq=5),
        "gid": message(GID, struct.pack("=iiII", 300, 300, 100, 0), seq=6),
        "sid": message(SID, struct.pack("=ii", 300, 300), seq=7),
        "ptrace-attach": message(PTRACE, struct.pack("=iiii", 300, 300, 400, 400), seq=8),
        "ptrace-detach": message(PTRACE, struct.pack("=iiii", 300, 300, 0, 0), seq=9),
        "comm": message(COMM, struct.pack("=ii16s", 300, 300, b"kworker/0:1"), seq=10),
        "comm-full": message(COMM, struct.pack("=ii16s", 300, 300, b"\xffABCDEFGHIJKLMNO")),
        "coredump": message(COREDUMP, struct.pack("=iiii", 300, 300, 1, 1), seq=11),
        "exit-code": message(EXIT, struct.pack("=iiIiii", 300, 300, 2 << 8, 17, 1, 1), seq=12),
        "exit-signal": message(EXIT, struct.pack("=iiIiii", 300, 300, 0x80 | 6, 17, 1, 1)),
        "exit-thread": message(EXIT, struct.pack("=iiIiii", 301, 300, 0, -1, 1, 1), seq=13),
        "exit-old": message(EXIT, struct.pack("=iiIi", 300, 300, 0, 17), union=16),
        "coredump-old": message(COREDUMP, struct.pack("=ii", 300, 300), union=8),
        "ack": message(0, struct.pack("=I", 0), cpu=0xFFFFFFFF),
        "ack-error": message(0, struct.pack("=I", 1), cpu=0xFFFFFFFF),
        "unknown-what": message(0x400, b"\x01" * 24),
    }
    out["many-with-gaps"] = b"".join(
        message(FORK, struct.pack("=iiii", 1, 1, 1000 + k, 1000 + k), cpu=k % 3, seq=k // 3 * 2)
        for k in range(24)
    )
    good = out["fork"]
    out["short-nlmsg-len"] = struct.pack("=I", 8) + good[4:]
    out["long-cn-len"] = good[:32] + struct.pack("=H", 0xFFFF) + good[34:]
    out["cut"] = good[: len(good) // 2]
    out["bad-idx"] = good[:16] + struct.pack("=I", 7) + good[20:]
    return out


def main(directory: str) -> None:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, datagram in seeds().items():
        for options in (0, 1, 3, 5):
            (out / f"{name}-o{options}").write_bytes(bytes([options]) + datagram)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {os.path.basename(sys.argv[0])} DIR")
    main(sys.argv[1])
