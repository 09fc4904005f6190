"""Seeds for fuzz_audit_netlink: datagrams as an audit netlink socket receives them, built
with struct.pack from realistic records (no live capture): an exec event in unicast framing
(nlmsg_len = payload length, the kernel's quirk) and in multicast framing (nlmsg_len = whole
message), a connect with its SOCKADDR, an ack, an error, an AUDIT_REPLACE probe, a status
reply, two messages in one datagram, and broken headers.

    python3 native/fuzz/seeds_audit_netlink.py DIR
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

NLMSG_ERROR, NLMSG_DONE = 2, 3
AUDIT_GET, AUDIT_REPLACE = 1000, 1329
SYSCALL, SOCKADDR, CWD, PATH, EXECVE, EOE, PROCTITLE, USER_LOGIN = (
    1300, 1306, 1307, 1302, 1309, 1320, 1327, 1112,
)
HEADER = struct.Struct("=IHHII")  # nlmsg_len, type, flags, seq, pid


def unicast(rtype: int, text: bytes) -> bytes:
    return HEADER.pack(len(text), rtype, 0, 0, 0) + text


def multicast(rtype: int, text: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(text), rtype, 0, 0, 0) + text


def stamp(serial: int) -> bytes:
    return b"audit(1717171717.%03d:%d): " % (serial % 1000, serial)


def exec_records(serial: int) -> list[tuple[int, bytes]]:
    s = stamp(serial)
    return [
        (SYSCALL, s + b"arch=c000003e syscall=59 success=yes exit=0 a0=55d0 a1=55e0 a2=55f0 "
         b"a3=0 items=2 ppid=812 pid=4242 auid=1000 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 "
         b"sgid=0 fsgid=0 tty=pts0 ses=3 comm=\"true\" exe=\"/usr/bin/true\" "
         b"key=\"iot-micro-agent\""),
        (EXECVE, s + b"argc=3 a0=\"/bin/true\" a1=\"token-1\" a2=7370616365206172670A"),
        (CWD, s + b"cwd=\"/root\""),
        (PATH, s + b"item=0 name=\"/bin/true\" inode=260249 dev=fd:00 mode=0100755 ouid=0 "
         b"ogid=0 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0"),
        (PROCTITLE, s + b"proctitle=2F62696E2F7472756500746F6B656E2D31"),
        (EOE, s),
    ]


def connect_records(serial: int) -> list[tuple[int, bytes]]:
    s = stamp(serial)
    return [
        (SYSCALL, s + b"arch=c000003e syscall=42 success=no exit=-115 a0=3 a1=7ffd a2=10 a3=0 "
         b"items=0 ppid=1 pid=900 auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 "
         b"sgid=0 fsgid=0 tty=(none) ses=4294967295 comm=\"curl\" exe=\"/usr/bin/curl\" "
         b"key=\"iot-micro-agent\""),
        (SOCKADDR, s + b"saddr=02000050C0A80001000000000000000000"),
        (SOCKADDR, s + b"saddr=0A0001BB00000000200104860000000000000000000000010000000000"),
        (PROCTITLE, s + b"proctitle=6375726C"),
        (EOE, s),
    ]


def ack(seq: int, error: int) -> bytes:
    request = HEADER.pack(16 + 44, 1001, 5, seq, 0)
    body = struct.pack("=i", error) + request
    return HEADER.pack(HEADER.size + len(body), NLMSG_ERROR, 0, seq, 0) + body


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    seeds: dict[str, bytes] = {}
    for i, (rtype, text) in enumerate(exec_records(101)):
        seeds[f"exec-unicast-{i}"] = unicast(rtype, text)
        seeds[f"exec-multicast-{i}"] = multicast(rtype, text)
    for i, (rtype, text) in enumerate(connect_records(102)):
        seeds[f"connect-{i}"] = unicast(rtype, text)
    seeds["user-login-nul"] = unicast(
        USER_LOGIN,
        stamp(103) + b"pid=77 uid=0 auid=1000 ses=2 msg='op=login id=1000 exe=\"/usr/sbin/sshd\" "
        b"hostname=? addr=192.0.2.7 terminal=ssh res=success'\x00",
    )
    seeds["ack"] = ack(7, 0)
    seeds["error-eexist"] = ack(8, -17)
    seeds["replace"] = HEADER.pack(20, AUDIT_REPLACE, 0, 0, 0) + struct.pack("=I", 812)
    status = struct.pack("=11I", 0, 1, 1, 812, 0, 8192, 3, 0, 127, 15000, 0)
    seeds["status-reply"] = HEADER.pack(16 + len(status), AUDIT_GET, 0, 9, 0) + status
    seeds["ack-then-record"] = ack(10, 0) + multicast(*exec_records(104)[0])
    seeds["done"] = HEADER.pack(20, NLMSG_DONE, 2, 11, 0) + b"\0\0\0\0"
    seeds["short-header"] = HEADER.pack(40, SYSCALL, 0, 0, 0)[:11]
    seeds["zero-length-control"] = HEADER.pack(0, NLMSG_ERROR, 0, 0, 0) + b"\0" * 8
    seeds["huge-length"] = HEADER.pack(0xFFFFFFFF, EXECVE, 0, 0, 0) + stamp(105) + b"argc=1 a0=x"
    for name, data in seeds.items():
        (out / name).write_bytes(data)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: seeds_audit_netlink.py DIR")
    main(Path(sys.argv[1]))
