"""Records the nf_tables netlink answers of the current network namespace as the kernel sends
them: the table, chain, set and rule dumps, then the element list of every set, one message
after the other. NftReader.decode makes the same result of a recording as NftReader.snapshot
made live (tests/test_nftables.py checks it); tests/fixtures/nftables/*.bin are such
recordings (written by `python3 tests/nft_record.py OUT` inside a namespace holding the
ruleset of the same name), and native/fuzz/seeds_nftables.py cuts its seeds from them.

Plain Python over the socket module: a test tool, not the agent's reader."""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

NETLINK_NETFILTER = 12
SUBSYS = 10 << 8
GETTABLE, GETCHAIN, GETSET, GETRULE, GETSETELEM = 1, 4, 10, 7, 13
NEWSET = 9
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
HEADER = struct.Struct("=IHHII")


def nla(number: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), number) + payload + bytes(-len(payload) % 4)


def message(kind: int, family: int, body: bytes, seq: int, flags: int = 0) -> bytes:
    """One netlink message of nf_tables: header, nfgenmsg (family, version 0, res_id 0), body."""
    payload = struct.pack("=BBH", family, 0, 0) + body
    return HEADER.pack(HEADER.size + len(payload), kind, flags, seq, 0) + payload


def attributes(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        length, number = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[number & 0x3FFF] = data[offset + 4: offset + length]
        offset += (length + 3) & ~3
    return out


def _dump(sock: socket.socket, seq: int, kind: int, family: int = 0,
          body: bytes = b"") -> list[bytes]:
    sock.send(message(SUBSYS | kind, family, body, seq, NLM_F_REQUEST | NLM_F_DUMP))
    out: list[bytes] = []
    while True:
        data = sock.recv(1 << 17)
        offset = 0
        while offset + HEADER.size <= len(data):
            length, kind_got, _flags, got_seq, _pid = HEADER.unpack_from(data, offset)
            one = data[offset: offset + length]
            offset += (length + 3) & ~3
            if got_seq != seq:
                continue
            if kind_got == NLMSG_DONE:
                return out
            if kind_got == NLMSG_ERROR:
                code = struct.unpack_from("=i", one, HEADER.size)[0]
                if code:
                    raise OSError(-code, "nf_tables dump refused")
                continue
            out.append(one)


def record() -> bytes:
    """Every answer, as received, of the dumps a snapshot makes."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(5)
        sock.bind((0, 0))
        out: list[bytes] = []
        for seq, kind in enumerate((GETTABLE, GETCHAIN, GETSET, GETRULE), 1):
            out += _dump(sock, seq, kind)
        sets = [one for one in out if struct.unpack_from("=H", one, 4)[0] == SUBSYS | NEWSET]
        for seq, one in enumerate(sets, 10):
            family = one[HEADER.size]
            attrs = attributes(one[HEADER.size + 4:])
            body = nla(1, attrs[1]) + nla(2, attrs[2])
            out += _dump(sock, seq, GETSETELEM, family, body)
    return b"".join(out)


if __name__ == "__main__":
    Path(sys.argv[1]).write_bytes(record())
