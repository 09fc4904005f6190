"""The generation of the nftables ruleset of this network namespace: a number the kernel
raises at every committed change (tables, chains, rules, sets and their elements added or
removed by a transaction). One NFT_MSG_GETGEN request over NETLINK_NETFILTER, a few hundred
microseconds, where a full dump of the ruleset costs a child process (firewall.py with
agent.inventory.nfnetlink): the Firewall collector dumps again only when the generation moved.

What a generation does not cover (set elements added from the packet path or expiring) the
gatherer marks as volatile (firewall.gather): such a ruleset is dumped every time."""

from __future__ import annotations

import socket
import struct

NETLINK_NETFILTER = 12
# (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, and the answer NFT_MSG_NEWGEN.
_GETGEN = (10 << 8) | 16
_NEWGEN = (10 << 8) | 15
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NFTA_GEN_ID = 1
NLA_TYPE_MASK = 0x3FFF
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_NFGEN = 4  # struct nfgenmsg: family, version, res_id
TIMEOUT_S = 2.0


def ruleset_generation() -> int | None:
    """The ruleset's generation id, or None when it cannot be had (no nf_tables in the
    kernel, no CAP_NET_ADMIN, an answer that makes no sense): then nothing may be assumed."""
    request = _HEADER.pack(_HEADER.size + _NFGEN, _GETGEN, NLM_F_REQUEST, 1, 0) + bytes(_NFGEN)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           NETLINK_NETFILTER) as sock:
            sock.settimeout(TIMEOUT_S)
            sock.bind((0, 0))
            sock.send(request)
            answer = sock.recv(4096)
    except OSError:
        return None
    return _generation_of(answer)


def _generation_of(answer: bytes) -> int | None:
    if len(answer) < _HEADER.size + _NFGEN:
        return None
    length, kind, _flags, seq, _pid = _HEADER.unpack_from(answer)
    if kind != _NEWGEN or seq != 1 or not _HEADER.size + _NFGEN <= length <= len(answer):
        return None
    offset = _HEADER.size + _NFGEN
    while offset + 4 <= length:
        attr_len, attr_type = struct.unpack_from("=HH", answer, offset)
        if attr_len < 4 or offset + attr_len > length:
            return None
        if attr_type & NLA_TYPE_MASK == NFTA_GEN_ID and attr_len == 8:
            return int(struct.unpack_from("!I", answer, offset + 4)[0])
        offset += (attr_len + 3) & ~3
    return None
