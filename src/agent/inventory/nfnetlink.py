"""A small reader of the nftables ruleset over NETLINK_NETFILTER (NFNL_SUBSYS_NFTABLES dumps),
for the Firewall gatherer: the messages of a dump with their attributes decoded by name, as
the kernel's include/uapi/linux/netfilter/nf_tables.h numbers and types them. Only what the
gatherer reads is described (tables, chains, sets, rules and their expressions, set
elements); an attribute not described is left out, an expression not described keeps its
name with empty data.

Values: strings (NUL-terminated text), unsigned ints (big-endian u32/u64, as the kernel sends
them), enums as the kernel's constant names (None for a number without one), flag sets as
frozensets of names, raw bytes for data values, and for an xt match or target's info the
bytes as colon-separated hex. Being plain Python over the socket module it costs a few MB,
where pyroute2's import alone holds about 20."""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE = 1
NFT_MSG_GETCHAIN = 4
NFT_MSG_GETRULE = 7
NFT_MSG_GETSET = 10
NFT_MSG_GETSETELEM = 13
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
# A dump the ruleset changed under (NLM_F_DUMP_INTR) is taken again, at most this often.
DUMP_TRIES = 3
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
TIMEOUT_S = 10.0
RECV_BYTES = 1 << 17

_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_NFGEN = struct.Struct("=BBH")

# A schema: attribute number -> (name, kind, argument). Kinds: "str", "u8", "u32", "u64",
# "bytes", "hex", "enum" (argument: number -> name; signed when the argument says so),
# "flags" (argument: names of bits 0, 1, ...), "nest" (argument: schema), "list" (argument:
# the schema of each element, a list of nests), "expr" (the data of an expression, by name).
Schema = dict[int, tuple[str, str, Any]]

REGISTERS = {0: "NFT_REG_VERDICT", 1: "NFT_REG_1", 2: "NFT_REG_2", 3: "NFT_REG_3",
             4: "NFT_REG_4"}
REGISTERS.update({8 + n: f"NFT_REG32_{n:02d}" for n in range(16)})

VERDICT_CODES = {0: "NF_DROP", 1: "NF_ACCEPT", 2: "NF_STOLEN", 3: "NF_QUEUE", 4: "NF_REPEAT",
                 5: "NF_STOP", -1: "NFT_CONTINUE", -2: "NFT_BREAK", -3: "NFT_JUMP",
                 -4: "NFT_GOTO", -5: "NFT_RETURN"}

META_KEYS = dict(enumerate((
    "NFT_META_LEN", "NFT_META_PROTOCOL", "NFT_META_PRIORITY", "NFT_META_MARK", "NFT_META_IIF",
    "NFT_META_OIF", "NFT_META_IIFNAME", "NFT_META_OIFNAME", "NFT_META_IIFTYPE",
    "NFT_META_OIFTYPE", "NFT_META_SKUID", "NFT_META_SKGID", "NFT_META_NFTRACE",
    "NFT_META_RTCLASSID", "NFT_META_SECMARK", "NFT_META_NFPROTO", "NFT_META_L4PROTO",
    "NFT_META_BRI_IIFNAME", "NFT_META_BRI_OIFNAME", "NFT_META_PKTTYPE", "NFT_META_CPU",
    "NFT_META_IIFGROUP", "NFT_META_OIFGROUP", "NFT_META_CGROUP", "NFT_META_PRANDOM",
    "NFT_META_SECPATH", "NFT_META_IIFKIND", "NFT_META_OIFKIND", "NFT_META_BRI_IIFPVID",
    "NFT_META_BRI_IIFVPROTO", "NFT_META_TIME_NS", "NFT_META_TIME_DAY", "NFT_META_TIME_HOUR",
    "NFT_META_SDIF", "NFT_META_SDIFNAME",
)))

CT_KEYS = dict(enumerate((
    "NFT_CT_STATE", "NFT_CT_DIRECTION", "NFT_CT_STATUS", "NFT_CT_MARK", "NFT_CT_SECMARK",
    "NFT_CT_EXPIRATION", "NFT_CT_HELPER", "NFT_CT_L3PROTOCOL", "NFT_CT_SRC", "NFT_CT_DST",
    "NFT_CT_PROTOCOL", "NFT_CT_PROTO_SRC", "NFT_CT_PROTO_DST", "NFT_CT_LABELS", "NFT_CT_PKTS",
    "NFT_CT_BYTES", "NFT_CT_AVGPKT", "NFT_CT_ZONE", "NFT_CT_EVENTMASK", "NFT_CT_SRC_IP",
    "NFT_CT_DST_IP", "NFT_CT_SRC_IP6", "NFT_CT_DST_IP6", "NFT_CT_ID",
)))

CMP_OPS = dict(enumerate(("NFT_CMP_EQ", "NFT_CMP_NEQ", "NFT_CMP_LT", "NFT_CMP_LTE",
                          "NFT_CMP_GT", "NFT_CMP_GTE")))

_REG = ("enum", REGISTERS)

VERDICT: Schema = {1: ("NFTA_VERDICT_CODE", "enum", ("signed", VERDICT_CODES)),
                   2: ("NFTA_VERDICT_CHAIN", "str", None)}
DATA: Schema = {1: ("NFTA_DATA_VALUE", "bytes", None), 2: ("NFTA_DATA_VERDICT", "nest", VERDICT)}

EXPRESSIONS: dict[str, Schema] = {
    "meta": {1: ("NFTA_META_DREG", *_REG), 2: ("NFTA_META_KEY", "enum", META_KEYS),
             3: ("NFTA_META_SREG", *_REG)},
    "payload": {1: ("NFTA_PAYLOAD_DREG", *_REG),
                2: ("NFTA_PAYLOAD_BASE", "enum", {0: "NFT_PAYLOAD_LL_HEADER",
                                                  1: "NFT_PAYLOAD_NETWORK_HEADER",
                                                  2: "NFT_PAYLOAD_TRANSPORT_HEADER"}),
                3: ("NFTA_PAYLOAD_OFFSET", "u32", None), 4: ("NFTA_PAYLOAD_LEN", "u32", None),
                5: ("NFTA_PAYLOAD_SREG", *_REG)},
    "ct": {1: ("NFTA_CT_DREG", *_REG), 2: ("NFTA_CT_KEY", "enum", CT_KEYS),
           3: ("NFTA_CT_DIRECTION", "u8", None), 4: ("NFTA_CT_SREG", *_REG)},
    "bitwise": {1: ("NFTA_BITWISE_SREG", *_REG), 2: ("NFTA_BITWISE_DREG", *_REG),
                3: ("NFTA_BITWISE_LEN", "u32", None), 4: ("NFTA_BITWISE_MASK", "nest", DATA),
                5: ("NFTA_BITWISE_XOR", "nest", DATA),
                6: ("NFTA_BITWISE_OP", "enum", {0: "NFT_BITWISE_BOOL", 1: "NFT_BITWISE_LSHIFT",
                                                2: "NFT_BITWISE_RSHIFT"}),
                7: ("NFTA_BITWISE_DATA", "nest", DATA)},
    "cmp": {1: ("NFTA_CMP_SREG", *_REG), 2: ("NFTA_CMP_OP", "enum", CMP_OPS),
            3: ("NFTA_CMP_DATA", "nest", DATA)},
    "range": {1: ("NFTA_RANGE_SREG", *_REG),
              2: ("NFTA_RANGE_OP", "enum", {0: "NFT_RANGE_EQ", 1: "NFT_RANGE_NEQ"}),
              3: ("NFTA_RANGE_FROM_DATA", "nest", DATA), 4: ("NFTA_RANGE_TO_DATA", "nest", DATA)},
    "lookup": {1: ("NFTA_LOOKUP_SET", "str", None), 2: ("NFTA_LOOKUP_SREG", *_REG),
               3: ("NFTA_LOOKUP_DREG", *_REG), 4: ("NFTA_LOOKUP_SET_ID", "u32", None),
               5: ("NFTA_LOOKUP_FLAGS", "flags", ("NFT_LOOKUP_F_INV",))},
    "immediate": {1: ("NFTA_IMMEDIATE_DREG", *_REG), 2: ("NFTA_IMMEDIATE_DATA", "nest", DATA)},
    "nat": {1: ("NFTA_NAT_TYPE", "enum", {0: "NFT_NAT_SNAT", 1: "NFT_NAT_DNAT"})},
    "match": {1: ("NFTA_MATCH_NAME", "str", None), 2: ("NFTA_MATCH_REV", "u32", None),
              3: ("NFTA_MATCH_INFO", "hex", None)},
    "target": {1: ("NFTA_TARGET_NAME", "str", None), 2: ("NFTA_TARGET_REV", "u32", None),
               3: ("NFTA_TARGET_INFO", "hex", None)},
}

EXPR: Schema = {1: ("NFTA_EXPR_NAME", "str", None), 2: ("NFTA_EXPR_DATA", "expr", None)}

TABLE: Schema = {1: ("NFTA_TABLE_NAME", "str", None)}
CHAIN: Schema = {
    1: ("NFTA_CHAIN_TABLE", "str", None), 3: ("NFTA_CHAIN_NAME", "str", None),
    4: ("NFTA_CHAIN_HOOK", "nest", {1: ("NFTA_HOOK_HOOKNUM", "u32", None),
                                    2: ("NFTA_HOOK_PRIORITY", "u32", None),
                                    3: ("NFTA_HOOK_DEV", "str", None)}),
    5: ("NFTA_CHAIN_POLICY", "u32", None), 7: ("NFTA_CHAIN_TYPE", "str", None),
}
SET: Schema = {
    1: ("NFTA_SET_TABLE", "str", None), 2: ("NFTA_SET_NAME", "str", None),
    3: ("NFTA_SET_FLAGS", "flags", ("NFT_SET_ANONYMOUS", "NFT_SET_CONSTANT", "NFT_SET_INTERVAL",
                                    "NFT_SET_MAP", "NFT_SET_TIMEOUT", "NFT_SET_EVAL",
                                    "NFT_SET_OBJECT", "NFT_SET_CONCAT")),
}
RULE: Schema = {1: ("NFTA_RULE_TABLE", "str", None), 2: ("NFTA_RULE_CHAIN", "str", None),
                3: ("NFTA_RULE_HANDLE", "u64", None), 4: ("NFTA_RULE_EXPRESSIONS", "list", EXPR)}
SET_ELEM: Schema = {1: ("NFTA_SET_ELEM_KEY", "nest", DATA), 2: ("NFTA_SET_ELEM_DATA", "nest", DATA),
                    3: ("NFTA_SET_ELEM_FLAGS", "flags", ("NFT_SET_ELEM_INTERVAL_END",)),
                    10: ("NFTA_SET_ELEM_KEY_END", "nest", DATA)}
SET_ELEM_LIST: Schema = {1: ("NFTA_SET_ELEM_LIST_TABLE", "str", None),
                         2: ("NFTA_SET_ELEM_LIST_SET", "str", None),
                         3: ("NFTA_SET_ELEM_LIST_ELEMENTS", "list", SET_ELEM)}

DUMPS: dict[str, tuple[int, Schema]] = {
    "tables": (NFT_MSG_GETTABLE, TABLE),
    "chains": (NFT_MSG_GETCHAIN, CHAIN),
    "sets": (NFT_MSG_GETSET, SET),
    "rules": (NFT_MSG_GETRULE, RULE),
}


class Attrs:
    """Decoded attributes, looked up by the kernel's name (get_attr); a message also has its
    nfgen family (msg["nfgen_family"])."""

    __slots__ = ("_family", "_values")

    def __init__(self, values: dict[str, Any], family: int = 0) -> None:
        self._values = values
        self._family = family

    def get_attr(self, name: str) -> Any:
        return self._values.get(name)

    def __getitem__(self, key: str) -> int:
        if key != "nfgen_family":
            raise KeyError(key)
        return self._family

    def __repr__(self) -> str:
        return f"Attrs({self._values!r})"


def _text(payload: bytes) -> str:
    return payload.split(b"\x00", 1)[0].decode("utf-8", "replace")


def decode(data: bytes, schema: Schema, expr_name: str | None = None) -> dict[str, Any]:
    """The attributes in data (a run of struct nlattr) that schema describes. A length that
    runs past the end stops the walk (what came before is kept)."""
    values: dict[str, Any] = {}
    name_of_expr: str | None = None
    offset = 0
    while offset + _NLA.size <= len(data):
        length, number = _NLA.unpack_from(data, offset)
        if length < _NLA.size or offset + length > len(data):
            break
        payload = data[offset + _NLA.size: offset + length]
        offset += (length + 3) & ~3
        spec = schema.get(number & NLA_TYPE_MASK)
        if spec is None:
            continue
        name, kind, arg = spec
        value: Any
        if kind == "str":
            value = _text(payload)
            if name == "NFTA_EXPR_NAME":
                name_of_expr = value
        elif kind == "u8":
            value = payload[0] if payload else None
        elif kind == "u32":
            value = struct.unpack("!I", payload[:4])[0] if len(payload) >= 4 else None
        elif kind == "u64":
            value = struct.unpack("!Q", payload[:8])[0] if len(payload) >= 8 else None
        elif kind == "bytes":
            value = bytes(payload)
        elif kind == "hex":
            value = ":".join(f"{b:02x}" for b in payload)
        elif kind == "enum":
            signed, table = arg if isinstance(arg, tuple) else ("", arg)
            if len(payload) < 4:
                continue
            number_value = struct.unpack("!i" if signed else "!I", payload[:4])[0]
            value = table.get(number_value)
        elif kind == "flags":
            if len(payload) < 4:
                continue
            bits = struct.unpack("!I", payload[:4])[0]
            value = frozenset(flag for i, flag in enumerate(arg) if bits & (1 << i))
        elif kind == "nest":
            value = Attrs(decode(payload, arg))
        elif kind == "list":
            value = [Attrs(decode(item, arg)) for item in _items(payload)]
        elif kind == "expr":
            # The data of an expression: its NFTA_EXPR_NAME came before it.
            value = Attrs(decode(payload, EXPRESSIONS.get(name_of_expr or expr_name or "", {})))
        else:  # pragma: no cover (the schemas above use only the kinds handled)
            continue
        values[name] = value
    return values


def _items(data: bytes) -> Iterator[bytes]:
    """The payloads of a nested list's elements (NFTA_LIST_ELEM)."""
    offset = 0
    while offset + _NLA.size <= len(data):
        length, _number = _NLA.unpack_from(data, offset)
        if length < _NLA.size or offset + length > len(data):
            return
        yield data[offset + _NLA.size: offset + length]
        offset += (length + 3) & ~3


def _attr_str(number: int, text: str) -> bytes:
    payload = text.encode() + b"\x00"
    head = _NLA.pack(_NLA.size + len(payload), number)
    return head + payload + bytes(-len(payload) % 4)


class NftSocket:
    """One NETLINK_NETFILTER socket of the current network namespace, for dumps."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_NETFILTER)
        try:
            self._sock.settimeout(TIMEOUT_S)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self._sock.bind((0, 0))
        except OSError:
            self._sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def dump(self, what: str) -> list[Attrs]:
        """Every table, chain, set or rule of every family (NFPROTO_UNSPEC)."""
        msg_type, schema = DUMPS[what]
        return self._request(msg_type, 0, b"", schema)

    def set_elements(self, family: int, table: str, name: str) -> list[Attrs]:
        """The element-list messages of one set."""
        attrs = _attr_str(1, table) + _attr_str(2, name)
        return self._request(NFT_MSG_GETSETELEM, family, attrs, SET_ELEM_LIST)

    def _request(self, msg_type: int, family: int, attrs: bytes, schema: Schema) -> list[Attrs]:
        for _ in range(DUMP_TRIES - 1):
            out, interrupted = self._dump_once(msg_type, family, attrs, schema)
            if not interrupted:
                return out
        out, interrupted = self._dump_once(msg_type, family, attrs, schema)
        if interrupted:
            raise OSError(errno.EAGAIN, "the ruleset kept changing during the dump")
        return out

    def _dump_once(self, msg_type: int, family: int, attrs: bytes,
                   schema: Schema) -> tuple[list[Attrs], bool]:
        self._seq += 1
        seq = self._seq
        body = _NFGEN.pack(family, 0, 0) + attrs
        kind = (NFNL_SUBSYS_NFTABLES << 8) | msg_type
        self._sock.send(_NLMSG.pack(_NLMSG.size + len(body), kind,
                                    NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        out: list[Attrs] = []
        interrupted = False
        while True:
            data = self._sock.recv(RECV_BYTES)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, got_type, flags, got_seq, _pid = _NLMSG.unpack_from(data, offset)
                if length < _NLMSG.size or offset + length > len(data):
                    raise OSError(errno.EPROTO, os.strerror(errno.EPROTO))
                message = data[offset + _NLMSG.size: offset + length]
                offset += (length + 3) & ~3
                if got_seq != seq:
                    continue  # the tail of an earlier request
                interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                if got_type == NLMSG_DONE:
                    return out, interrupted
                if got_type == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", message)[0] if len(message) >= 4 else 0
                    if code == 0:
                        continue
                    raise OSError(code, os.strerror(code))
                if got_type >> 8 != NFNL_SUBSYS_NFTABLES or len(message) < _NFGEN.size:
                    continue
                msg_family = message[0]
                out.append(Attrs(decode(message[_NFGEN.size:], schema), msg_family))
