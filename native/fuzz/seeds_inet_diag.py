"""Seeds of fuzz_inet_diag: SOCK_DIAG_BY_FAMILY dump answers built with struct.pack (no capture
of the live kernel), in the harness's input form: one byte of protocol (6 TCP, 17 UDP), then
the netlink messages. tests/test_sock_diag.py builds its crafted dumps with the same functions.

    python3 native/fuzz/seeds_inet_diag.py DIR
"""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2
NLM_F_MULTI = 2
# struct tcp_info (linux/tcp.h): where the byte counters sit, and the whole size on 6.x.
TCPI_BYTES_ACKED = 120
TCPI_BYTES_RECEIVED = 128
TCPI_BYTES_SENT = 200
TCP_INFO_LEN = 232

TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_LISTEN = 10


def nlmsg(msg_type: int, payload: bytes, seq: int = 1, flags: int = NLM_F_MULTI) -> bytes:
    """struct nlmsghdr + payload, padded to 4 bytes."""
    data = struct.pack("=IHHII", 16 + len(payload), msg_type, flags, seq, 0) + payload
    return data + b"\0" * (-len(data) % 4)


def nlattr(attr_type: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), attr_type) + payload
    return data + b"\0" * (-len(data) % 4)


def tcp_info(acked: int, received: int, sent: int, length: int = TCP_INFO_LEN) -> bytes:
    """A tcp_info of `length` bytes with the three byte counters set (where they fit)."""
    info = bytearray(max(length, TCP_INFO_LEN))
    info[0] = TCP_ESTABLISHED
    struct.pack_into("=Q", info, TCPI_BYTES_ACKED, acked)
    struct.pack_into("=Q", info, TCPI_BYTES_RECEIVED, received)
    struct.pack_into("=Q", info, TCPI_BYTES_SENT, sent)
    return bytes(info[:length])


def _addr(family: int, text: str) -> bytes:
    raw = socket.inet_pton(family, text)
    return raw + b"\0" * (16 - len(raw))


def diag_msg(
    family: int,
    state: int,
    src: str,
    sport: int,
    dst: str,
    dport: int,
    uid: int,
    inode: int,
    attrs: bytes = b"",
) -> bytes:
    """struct inet_diag_msg (72 bytes) and its attributes: the payload of one message."""
    sock_id = (
        struct.pack("!HH", sport, dport)
        + _addr(family, src)
        + _addr(family, dst)
        + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
    )
    head = struct.pack("=BBBB", family, state, 0, 0) + sock_id
    return head + struct.pack("=IIIII", 0, 0, 0, uid, inode) + attrs


def sock_msg(*args: object, seq: int = 1, **kwargs: object) -> bytes:
    return nlmsg(SOCK_DIAG_BY_FAMILY, diag_msg(*args, **kwargs), seq)  # type: ignore[arg-type]


def done(seq: int = 1) -> bytes:
    return nlmsg(NLMSG_DONE, struct.pack("=i", 0), seq)


def error(errno: int, seq: int = 1) -> bytes:
    request = struct.pack("=IHHII", 72, SOCK_DIAG_BY_FAMILY, 0x301, seq, 0)
    return nlmsg(NLMSG_ERROR, struct.pack("=i", -errno) + request, seq, flags=0)


def tcp_dump_v4() -> bytes:
    info = nlattr(INET_DIAG_INFO, tcp_info(1001, 300, 1000))
    return (
        sock_msg(socket.AF_INET, TCP_LISTEN, "0.0.0.0", 22, "0.0.0.0", 0, 0, 1001)
        + sock_msg(socket.AF_INET, TCP_LISTEN, "127.0.0.1", 631, "0.0.0.0", 0, 0, 1002)
        + sock_msg(socket.AF_INET, TCP_ESTABLISHED, "192.168.1.10", 22, "192.168.1.20", 51234,
                   0, 1003, attrs=info)
        + sock_msg(socket.AF_INET, TCP_ESTABLISHED, "192.168.1.10", 40000, "93.184.216.34",
                   443, 1000, 1004, attrs=nlattr(INET_DIAG_INFO, tcp_info(5, 6, 7, 136)))
        + sock_msg(socket.AF_INET, TCP_TIME_WAIT, "192.168.1.10", 40001, "93.184.216.34",
                   443, 0, 0)
        + done()
    )


def tcp_dump_v6() -> bytes:
    info = nlattr(INET_DIAG_INFO, tcp_info(10, 20, 10))
    return (
        sock_msg(socket.AF_INET6, TCP_LISTEN, "::", 22, "::", 0, 0, 2001)
        + sock_msg(socket.AF_INET6, TCP_ESTABLISHED, "2001:db8::1", 22, "2001:db8::2", 50000,
                   0, 2002, attrs=info)
        + sock_msg(socket.AF_INET6, TCP_SYN_SENT, "::ffff:10.0.0.1", 50001, "::ffff:10.0.0.2",
                   80, 33, 2003, attrs=nlattr(INET_DIAG_INFO, tcp_info(0, 0, 0, 104)))
        + done()
    )


def udp_dump() -> bytes:
    return (
        sock_msg(socket.AF_INET, TCP_CLOSE, "0.0.0.0", 68, "0.0.0.0", 0, 0, 3001)
        + sock_msg(socket.AF_INET6, TCP_CLOSE, "fe80::1", 546, "::", 0, 0, 3002)
        + sock_msg(socket.AF_INET, TCP_ESTABLISHED, "10.0.0.1", 5353, "10.0.0.53", 53, 0, 3003)
        + done()
    )


def seeds() -> dict[str, bytes]:
    tcp4, tcp6, udp = tcp_dump_v4(), tcp_dump_v6(), udp_dump()
    return {
        "tcp-v4": b"\x06" + tcp4,
        "tcp-v6": b"\x06" + tcp6,
        "udp": b"\x11" + udp,
        "tcp-error": b"\x06" + error(2),
        "tcp-truncated": b"\x06" + tcp4[: len(tcp4) // 2],
        "tcp-bad-attr": b"\x06"
        + sock_msg(socket.AF_INET, TCP_ESTABLISHED, "10.1.1.1", 1, "10.1.1.2", 2, 0, 9,
                   attrs=struct.pack("=HH", 400, INET_DIAG_INFO) + b"\0" * 12)
        + done(),
        # The one-request TCP dump (TCPDIAG_GETSOCK) of both families: the same messages
        # under type 18.
        "tcp-both": b"\x06" + nlmsg(18, diag_msg(socket.AF_INET, TCP_ESTABLISHED, "10.1.1.1", 1,
                                               "10.1.1.2", 2, 0, 11))
        + nlmsg(18, diag_msg(socket.AF_INET6, TCP_LISTEN, "::", 22, "::", 0, 0, 12)) + done(),
    }


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (out / name).write_bytes(data)


if __name__ == "__main__":
    main()
