"""native/fuzz/seeds_procfs.py DIR: seeds for fuzz_procfs, realistic /proc texts written out
here (not read from this machine): stat, status, meminfo, cpuinfo (x86, arm64, 32-bit ARM),
uptime, loadavg, a /proc/stat with its btime line, and cmdlines. The first byte of each seed
picks the parser: 0 stat, 1 status, 2 meminfo, 3 cpuinfo, 4 uptime, 5 loadavg, 6 btime line,
7 argv."""

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
MEMINFO = b"""MemTotal:         499224 kB
MemFree:           32764 kB
MemAvailable:     250112 kB
Buffers:           12000 kB
Cached:           190000 kB
SwapCached:            0 kB
SwapTotal:        102396 kB
SwapFree:         102396 kB
"""
CPUINFO_X86 = b"".join(
    b"processor\t: %d\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Atom(TM) CPU E3845 @ "
    b"1.91GHz\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov\n\n" % k
    for k in range(4)
)
CPUINFO_ARM64 = b"".join(
    b"processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    b"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd08\n\n" % k
    for k in range(4)
) + b"Hardware\t: BCM2835\nRevision\t: c03111\nSerial\t\t: 10000000abcdef01\nModel\t\t: Raspberry Pi 4\n"
CPUINFO_ARMV7 = (
    b"Processor\t: ARMv7 Processor rev 10 (v7l)\nBogoMIPS\t: 790.52\n"
    b"Features\t: swp half thumb fastmult vfp edsp neon vfpv3 tls\n\n"
    b"Hardware\t: Freescale i.MX 6Quad/DualLite (Device Tree)\nRevision\t: 0000\n"
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
        "meminfo": b"\2" + MEMINFO,
        "cpuinfo-x86": b"\3" + CPUINFO_X86,
        "cpuinfo-arm64": b"\3" + CPUINFO_ARM64,
        "cpuinfo-armv7": b"\3" + CPUINFO_ARMV7,
        "uptime": b"\4" + b"35791.42 70012.88\n",
        "loadavg": b"\5" + b"0.52 0.58 0.59 2/389 31337\n",
        "btime": b"\6" + b"btime 1700000000",
        "proc-stat": b"\3" + PROC_STAT,
        "argv": b"\7" + b"/usr/sbin/sshd\0-D\0-o\0PermitRootLogin no\0",
        "argv-title": b"\7" + b"sshd: root@pts/0",
        "argv-binary": b"\7" + b"/bin/echo\0\xff\xfe\0\0\0x",
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
