"""What the tests that touch the kernel's audit share: whether an owner's process is alive, and
giving up audit ownership with AUDIT_SET pid 0 (the kernel accepts it from the owner itself,
and clears a registered owner whose process is gone when it probes it)."""

from __future__ import annotations

import os
import socket
import struct

NETLINK_AUDIT = 9
AUDIT_SET = 1001
AUDIT_STATUS_PID = 0x4
NLM_F_REQUEST_ACK = 0x1 | 0x4


def pid_alive(pid: int) -> bool:
    """kill(pid, 0): EPERM still means the process exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_audit_pid() -> None:
    """AUDIT_SET pid 0 from this process, waiting for the kernel's answer."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT) as s:
        s.bind((0, 0))
        body = struct.pack("=11I", AUDIT_STATUS_PID, *([0] * 10))
        s.send(struct.pack("=IHHII", 16 + len(body), AUDIT_SET, NLM_F_REQUEST_ACK, 1, 0) + body)
        s.settimeout(2)
        s.recv(8192)


# The agent's exclusion of the record types no event reads (native/audit_netlink.c,
# install_exclusions), as `auditctl -l` prints it. It carries no key: the exclude filter would
# skip a rule with one.
EXCLUSION_RULE = "-a always,exclude -F msgtype>=EOE -F msgtype<=BPRM_FCAPS"
# ... and of PATH records (exec events' `paths`), while no watch rule wants them.
PATH_EXCLUSION_RULE = "-a always,exclude -F msgtype>=PATH -F msgtype<=PATH"
# ... and of PROCTITLE records (the parser then completes events at drain ends).
PROCTITLE_EXCLUSION_RULE = "-a always,exclude -F msgtype>=PROCTITLE -F msgtype<=PROCTITLE"
EXCLUSION_RULES = (EXCLUSION_RULE, PATH_EXCLUSION_RULE, PROCTITLE_EXCLUSION_RULE)
NETLINK_ADD_MEMBERSHIP = 1
SOL_NETLINK = 270
AUDIT_NLGRP_READLOG = 1


def multicast_readers() -> int:
    """Sockets in the audit multicast group (/proc/net/netlink), as the agent counts them: with
    one, it leaves the exclusion out."""
    readers = 0
    with open("/proc/net/netlink", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1]) == NETLINK_AUDIT and int(fields[3], 16) != 0:
                readers += 1
    return readers


def multicast_reader() -> socket.socket:
    """A raw reader of the audit multicast group (needs CAP_AUDIT_READ), as journald's would be."""
    reader = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    reader.bind((0, 0))
    reader.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, AUDIT_NLGRP_READLOG)
    return reader


def proctitle_parts(argv: list[bytes]) -> list[bytes]:
    """What the kernel's PROCTITLE of a process with this command line holds, split at NUL as
    `title` is: the NUL-joined argv cut at 128 bytes, then every unprintable byte at its end
    (the kernel's isprint: 0x20-0x7e, 0xa0-0xff), so a newline the cut left last goes too."""
    raw = b"".join(a + b"\0" for a in argv)[:128]
    end = len(raw)
    while end > 0 and not (0x20 <= raw[end - 1] <= 0x7E or raw[end - 1] >= 0xA0):
        end -= 1
    return raw[:end].split(b"\0")
