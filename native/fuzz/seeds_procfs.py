"""native/fuzz/seeds_procfs.py DIR: seeds for fuzz_procfs, realistic /proc texts written out
here (not read from this machine): stat, status, a /proc/stat with its btime line, and
cmdlines. The first byte of each seed picks the parser: 0 stat, 1 status, 2 /proc/stat lines
and btime, 3 argv."""

from __future__ import annotations

import os
import sys
from pathlib import Path

STAT = (
    b"1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 1200 0 3 0 12 5 0 0 20 0 1 0 4242 "
    b"12345678 345 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n"
)
KTHREAD_STAT = (
    b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 2 0 0 "
    b"18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 0 1 0 0 0 0 0\n"
)
ZOMBIE_STAT = b"99 (true) Z 98 99 98 0 -1 4227084 85 0 0 0 0 0 0 0 20 0 1 0 6000 0 0 1 0\n"
STATUS = b"""Name:\tsshd
Umask:\t0022
State:\tS (sleeping)
Tgid:\t812
Ngid:\t0
Pid:\t812
PPid:\t1
TracerPid:\t0
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
FDSize:\t64
Groups:\t
NStgid:\t812
Threads:\t1
"""
STATUS_NOBODY = STATUS.replace(b"Uid:\t0\t0\t0\t0", b"Uid:\t1000\t65534\t1000\t65534").replace(
    b"Gid:\t0\t0\t0\t0", b"Gid:\t100\t100\t100\t100"
)
PROC_STAT = (
    b"cpu  10132153 290696 3084719 46828483 16683 0 25195 0 0 0\n"
    b"cpu0 1393280 32966 572056 13343292 6130 0 17875 0 0 0\n"
    b"intr 199292 " + b" ".join(b"%d" % (k % 7) for k in range(300)) + b"\n"
    b"ctxt 1990473\nbtime 1700000000\nprocesses 2915\nprocs_running 1\nprocs_blocked 0\n"
)


def seeds() -> dict[str, bytes]:
    return {
        "stat": b"\0" + STAT,
        "stat-kthread": b"\0" + KTHREAD_STAT,
        "stat-zombie": b"\0" + ZOMBIE_STAT,
        "status": b"\1" + STATUS,
        "status-nobody": b"\1" + STATUS_NOBODY,
        "btime": b"\2" + b"btime 1700000000",
        "proc-stat": b"\2" + PROC_STAT,
        "argv": b"\3" + b"/usr/sbin/sshd\0-D\0-o\0PermitRootLogin no\0",
        "argv-title": b"\3" + b"sshd: root@pts/0",
        "argv-binary": b"\3" + b"/bin/echo\0\xff\xfe\0\0\0x",
        # A cmdline read cut at max_argv_bytes inside its second argument (first byte's top
        # bit: more follows): only the first argument is whole.
        "argv-cut": b"\3" + b"\xc1/bin/x\0" + b"y" * 64,
    }


def main(directory: str) -> None:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (out / name).write_bytes(data)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {os.path.basename(sys.argv[0])} DIR")
    main(sys.argv[1])
