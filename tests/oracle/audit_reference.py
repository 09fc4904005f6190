"""The pure-Python reference audit parser: docs/audit-parsing.md and docs/events.md in plain
Python, the oracle the C core (native/audit_*.c) is tested against, and the "pure-Python
parser" in benchmarks.

It mirrors agent.native.AuditParser but returns event dicts instead of msgpack batches: each
dict is what `msgpack.unpackb(batch, raw=False)` gives for the C core's encoding of the same
event (str for valid UTF-8 text, bytes for anything else). It does not import the compiled
core.

Choices where the docs leave room are marked "CHOICE" below; the C core must make the same.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, fields
from typing import Any, Optional, Union

from agent.limits import DEFAULT_MAX_MESSAGE_BYTES
from oracle.audit_names import ARCHES, RECORD_TYPES, SYSCALLS

Event = dict[str, Any]
Text = Union[str, bytes]
_Node = Optional[bytes]
_Key = tuple[Optional[bytes], int]

# ---------------------------------------------------------------------------------------------
# constants

T_LOGIN = 1006
T_SYSCALL = 1300
T_PATH = 1302
T_SOCKETCALL = 1304
T_SOCKADDR = 1306
T_CWD = 1307
T_EXECVE = 1309
T_EOE = 1320
T_PROCTITLE = 1327

U64_MAX = (1 << 64) - 1
I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1
UNSET_ID = 4294967295
BATCH_HEADER = 5  # the array32 header of a batch
LOSS_WINDOW = 4096
LOSS_NODES = 8
RECORD_COST = 8  # what a kept record costs beyond its fields text (docs 3.4)
MAX_FIELDS = 4096  # fields of one record that are read; beyond, the event carries trunc
MAX_SYSCALL_FIELDS = 256  # likewise for the SYSCALL record

RECORD_NUMBERS: dict[bytes, int] = {name.encode(): num for num, name in RECORD_TYPES.items()}
_SYSCALL_BY_ARCH: dict[int, dict[int, str]] = {
    arch: SYSCALLS[name] for arch, name in ARCHES.items()
}

# Records that do not decide an event's category (docs/audit-parsing.md 6.3).
_AUX_TYPES = frozenset({T_SYSCALL, T_PROCTITLE, T_CWD, T_PATH, T_SOCKADDR, T_EXECVE})

AUTH_TYPES = frozenset(
    {
        "USER_AUTH", "USER_ACCT", "USER_LOGIN", "USER_LOGOUT", "USER_START", "USER_END",
        "USER_ERR", "USER_CMD", "USER_ROLE_CHANGE", "CRED_ACQ", "CRED_DISP", "CRED_REFR",
        "LOGIN",
    }
)  # fmt: skip
ACCOUNT_TYPES = frozenset(
    {
        "ADD_USER", "DEL_USER", "ADD_GROUP", "DEL_GROUP", "USER_MGMT", "GRP_MGMT",
        "USER_CHAUTHTOK", "GRP_CHAUTHTOK", "CHUSER_ID", "CHGRP_ID", "ACCT_LOCK", "ACCT_UNLOCK",
        "ROLE_ASSIGN", "ROLE_REMOVE",
    }
)  # fmt: skip
AUDITCFG_TYPES = frozenset(
    {
        "CONFIG_CHANGE", "DAEMON_START", "DAEMON_END", "DAEMON_ABORT", "DAEMON_CONFIG",
        "DAEMON_ROTATE", "DAEMON_RESUME", "DAEMON_ACCEPT", "DAEMON_CLOSE", "DAEMON_ERR",
        "USYS_CONFIG",
    }
)  # fmt: skip

# Fields hex-encoded by audit when unquoted (events.md); saddr is deliberately not here.
HEX_FIELDS = frozenset(
    b"name path cwd exe comm acct cmd proctitle key data dir file hostname vm watch root_dir "
    b"old-chardev new-chardev".split()
)
# CHOICE: the fields whose 4294967295 is nil in an `audit` event's `f` map.
ID_FIELDS = frozenset(
    b"auid uid gid euid egid suid fsuid sgid fsgid ses ouid ogid old-auid old-ses id oauid "
    b"sauid".split()
)
_NIL_TEXTS = frozenset({b"(null)", b"(none)", b"?"})
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_DEC_DIGITS = b"0123456789"

# i386 socketcall(2) call numbers (the SYSCALL record's a0) -> net direction.
_SOCKETCALL_DIR = {2: "bind", 3: "out", 5: "in", 18: "in"}
_NET_DIR = {"connect": "out", "accept": "in", "accept4": "in", "bind": "bind"}
_FAMILIES = {1: "unix", 2: "inet", 10: "inet6", 16: "netlink"}

# Field kinds: how the value was written.
PLAIN = 0
DQUOTED = 1
SQUOTED = 2


# ---------------------------------------------------------------------------------------------
# options and small helpers


@dataclass(frozen=True)
class ReferenceOptions:
    """Bounds of one parser, with the C core's defaults and its checks (native/core.h,
    native/audit.c); ValueError where am_audit_new would reject them."""

    max_in_flight: int = 256
    timeout_ms: int = 2000
    max_line_bytes: int = 65536
    max_event_bytes: int = 131072
    max_pending_bytes: int = 1048576
    batch_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_batches: int = 8

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
                raise ValueError(f"{f.name}={value!r} is out of range")
        valid = (
            1 <= self.max_in_flight <= 65536
            and 256 <= self.max_line_bytes <= 1 << 24
            and self.max_line_bytes + RECORD_COST <= self.max_event_bytes <= 1 << 26
            and self.max_event_bytes <= self.max_pending_bytes <= 1 << 30
            and 4096 <= self.batch_bytes <= 1 << 28
            and 1 <= self.max_batches <= 1024
        )
        if not valid:
            raise ValueError(f"options out of bounds: {self}")


STAT_NAMES = (
    "bytes", "lines", "records", "events", "malformed", "long_lines", "truncated", "forced",
    "timeouts", "duplicates", "gaps", "batches",
)  # fmt: skip


def text_value(data: bytes) -> Text:
    """str when data is valid UTF-8 (what the core encodes as msgpack str), else bytes."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(data)


def is_hex(data: bytes) -> bool:
    """Non-empty, even length, only hex digits."""
    return len(data) > 0 and len(data) % 2 == 0 and not data.translate(None, _HEX_DIGITS)


def parse_u64(data: bytes) -> int | None:
    """Unsigned decimal covering the whole span: 1-20 digits, at most 2^64-1."""
    if not 0 < len(data) <= 20 or data.translate(None, _DEC_DIGITS):
        return None
    value = int(data)
    return value if value <= U64_MAX else None


def parse_i64(data: bytes) -> int | None:
    """Signed decimal (a leading '-' only) within int64."""
    if data[:1] == b"-":
        value = parse_u64(data[1:])
        if value is None or value > -I64_MIN:
            return None
        return -value
    value = parse_u64(data)
    return value if value is not None and value <= I64_MAX else None


def parse_hex_u64(data: bytes) -> int | None:
    """1-16 hex digits."""
    if not 0 < len(data) <= 16 or data.translate(None, _HEX_DIGITS):
        return None
    return int(data, 16)


def parse_octal(data: bytes) -> int | None:
    """PATH mode: 1-22 octal digits within uint64."""
    if not 0 < len(data) <= 22 or data.translate(None, b"01234567"):
        return None
    value = int(data, 8)
    return value if value <= U64_MAX else None


def record_type_name(number: int) -> str:
    return RECORD_TYPES.get(number) or f"UNKNOWN[{number}]"


def syscall_name(arch: int, number: int) -> str | None:
    table = _SYSCALL_BY_ARCH.get(arch)
    return None if table is None else table.get(number)


def format_ipv6(addr: bytes) -> str:
    """As the C library's inet_ntop(3) writes it, which is what the core's am_ip_text is held
    to (tests/test_ip_text.py): RFC 5952, except IPv4-mapped addresses as ::ffff:a.b.c.d and
    IPv4-compatible ones as ::a.b.c.d (docs/audit-parsing.md)."""
    return socket.inet_ntop(socket.AF_INET6, addr)


def packed_size(obj: Any) -> int:
    """Bytes of obj in msgpack's smallest forms (str8 and bin types), as the core writes it."""
    if obj is None or obj is True or obj is False:
        return 1
    if isinstance(obj, int):
        if obj >= 0:
            if obj < 0x80:
                return 1
            if obj <= 0xFF:
                return 2
            if obj <= 0xFFFF:
                return 3
            return 5 if obj <= 0xFFFFFFFF else 9
        if obj >= -32:
            return 1
        if obj >= -0x80:
            return 2
        if obj >= -0x8000:
            return 3
        return 5 if obj >= -0x80000000 else 9
    if isinstance(obj, str):
        n = len(obj.encode("utf-8"))
        if n < 32:
            return 1 + n
        return n + (2 if n <= 0xFF else 3 if n <= 0xFFFF else 5)
    if isinstance(obj, bytes):
        n = len(obj)
        return n + (2 if n <= 0xFF else 3 if n <= 0xFFFF else 5)
    if isinstance(obj, list):
        n = len(obj)
        head = 1 if n < 16 else 3 if n <= 0xFFFF else 5
        return head + sum(packed_size(item) for item in obj)
    if isinstance(obj, dict):
        n = len(obj)
        head = 1 if n < 16 else 3 if n <= 0xFFFF else 5
        return head + sum(packed_size(k) + packed_size(v) for k, v in obj.items())
    raise TypeError(f"cannot size {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------
# fields (docs/audit-parsing.md section 5)


@dataclass(frozen=True)
class Field:
    key: bytes
    value: bytes
    kind: int  # PLAIN, DQUOTED, SQUOTED

    @property
    def is_nil(self) -> bool:
        return self.kind == PLAIN and self.value in _NIL_TEXTS


def _starts_with_pair(text: bytes) -> bool:
    """Does the text start (after spaces) with a key=value token?"""
    start = len(text) - len(text.lstrip(b" "))
    end = text.find(b" ", start)
    if end < 0:
        end = len(text)
    return text.find(b"=", start, end) > start


def split_fields(text: bytes, expand_msg: bool = True) -> tuple[list[Field], bool]:
    """The fields of a record's fields text, in order (duplicates kept), and whether it held
    a bare word. A single-quoted msg='...' whose text starts with a key=value token is replaced
    by its own fields (not recursively)."""
    out: list[Field] = []
    free_text = False
    n = len(text)
    i = 0
    while i < n:
        while i < n and text[i] == 0x20:
            i += 1
        if i >= n:
            break
        end = text.find(b" ", i)
        if end < 0:
            end = n
        eq = text.find(b"=", i, end)
        if eq <= i:  # no '=' (or an empty key, CHOICE): a bare word
            free_text = True
            i = end
            continue
        key = text[i:eq]
        try:
            key.decode("utf-8")
        except UnicodeDecodeError:  # a name that is not UTF-8 is no field name
            free_text = True
            i = end
            continue
        v = eq + 1
        quote = text[v] if v < n else 0
        if quote in (0x22, 0x27):
            kind = DQUOTED if quote == 0x22 else SQUOTED
            start = v + 1
            close = text.find(b'"' if quote == 0x22 else b"'", start)
            stop = n if close < 0 else close
            nxt = n if close < 0 else close + 1
            value = text[start:stop]
        else:
            kind = PLAIN
            value = text[v:end]
            nxt = end
        if kind == SQUOTED and expand_msg and key == b"msg" and _starts_with_pair(value):
            inner, inner_free = split_fields(value, expand_msg=False)
            out.extend(inner)
            free_text = free_text or inner_free
        else:
            out.append(Field(key, value, kind))
        i = nxt
    return out, free_text


def first_fields(items: list[Field]) -> dict[bytes, Field]:
    """By name, the first field of each name."""
    out: dict[bytes, Field] = {}
    for f in items:
        if f.key not in out:
            out[f.key] = f
    return out


def field_bytes(f: Field, hexable: bool) -> bytes | None:
    """The value's bytes: None for an unquoted nil text, hex-decoded when hexable, unquoted
    and valid hex, else as written."""
    if f.kind == PLAIN:
        if f.value in _NIL_TEXTS:
            return None
        if hexable and is_hex(f.value):
            return bytes.fromhex(f.value.decode("ascii"))
    return f.value


def field_text(f: Field, hexable: bool = False) -> Text | None:
    data = field_bytes(f, hexable)
    return None if data is None else text_value(data)


# ---------------------------------------------------------------------------------------------
# records (docs/audit-parsing.md section 2)


@dataclass(frozen=True)
class Record:
    type: int
    ts: int
    serial: int
    node: _Node
    text: bytes  # the fields text


_SEC_MAX = (U64_MAX - 999) // 1000  # CHOICE: SEC*1000+999 must fit 64 bits


def _parse_stamp(data: bytes, i: int) -> tuple[int, int, int] | None:
    """'audit(SEC.FRAC:SERIAL):' at data[i:] (the last ':' is optional: auditd < 3.0 wrote
    DAEMON_* records without it): (ts_ms, serial, offset past the ')' or '):')."""
    if not data.startswith(b"audit(", i):
        return None
    n = len(data)
    i += 6
    start = i
    while i < n and 0x30 <= data[i] <= 0x39:
        i += 1
    sec = parse_u64(data[start:i])
    if sec is None or i >= n or data[i] != 0x2E:
        return None
    i += 1
    start = i
    while i < n and 0x30 <= data[i] <= 0x39:
        i += 1
    frac = data[start:i]
    if not frac or i >= n or data[i] != 0x3A:
        return None
    millis = int((frac[:3] + b"00")[:3])
    if sec > _SEC_MAX:
        return None
    i += 1
    start = i
    while i < n and 0x30 <= data[i] <= 0x39:
        i += 1
    serial = parse_u64(data[start:i])
    if serial is None or i >= n or data[i] != 0x29:
        return None
    i += 2 if i + 1 < n and data[i + 1] == 0x3A else 1
    return sec * 1000 + millis, serial, i


def _fields_text(data: bytes, i: int) -> bytes:
    n = len(data)
    while i < n and data[i] == 0x20:
        i += 1
    cut = data.find(b"\x1d", i)
    return data[i:] if cut < 0 else data[i:cut]


def _token_end(line: bytes, i: int) -> int:
    end = line.find(b" ", i)
    return len(line) if end < 0 else end


def parse_line(line: bytes) -> Record | None:
    """A log line without its newline; None when it is not a record."""
    n = len(line)
    i = 0
    node: _Node = None
    while True:
        while i < n and line[i] == 0x20:
            i += 1
        if i >= n:
            return None
        if line.startswith(b"type=", i):
            break
        end = _token_end(line, i)
        if line.find(b"=", i, end) < 0:
            return None
        if line.startswith(b"node=", i):
            if end - i - 5 > 255:  # a node name is a host name: 255 bytes at most
                return None
            node = line[i + 5 : end] or None  # the last wins; CHOICE: "node=" is no node
        i = end
    i += 5
    end = _token_end(line, i)
    name = line[i:end]
    if name.startswith(b"UNKNOWN[") and len(name) > 9 and name.endswith(b"]"):
        number = parse_u64(name[8:-1])
        if number is None or number > 0xFFFFFFFF:
            return None
        rtype = number
    else:
        known = RECORD_NUMBERS.get(name)
        if known is None:
            return None
        rtype = known
    i = end
    while i < n and line[i] == 0x20:
        i += 1
    if not line.startswith(b"msg=", i):
        return None
    stamp = _parse_stamp(line, i + 4)
    if stamp is None:
        return None
    ts, serial, past = stamp
    return Record(rtype, ts, serial, node, _fields_text(line, past))


def parse_payload(rtype: int, payload: bytes) -> Record | None:
    """A netlink record: 'audit(SEC.MS:SERIAL): fields' of message type rtype."""
    stamp = _parse_stamp(payload, 0)
    if stamp is None:
        return None
    ts, serial, past = stamp
    return Record(rtype, ts, serial, None, _fields_text(payload, past))


# ---------------------------------------------------------------------------------------------
# events: typing and keys (docs/events.md, docs/audit-parsing.md sections 6 and 7)


class OpenEvent:
    __slots__ = ("first_type", "kept", "node", "records", "seen", "serial", "truncated", "ts")

    def __init__(self, rec: Record) -> None:
        self.node = rec.node
        self.serial = rec.serial
        self.ts = rec.ts
        self.first_type = rec.type
        self.records: list[Record] = []
        self.kept = 0  # cost of the kept records: fields text + RECORD_COST each
        self.seen = rec.ts  # the stream time when its last record came (set by the parser)
        self.truncated = False


class _Absent:
    """A value that leaves its key out."""


_ABSENT = _Absent()


def _put(ev: Event, key: str, value: Any) -> None:
    """Writes key unless it was written already (the first writer wins) or value is absent."""
    if key not in ev and value is not _ABSENT:
        ev[key] = value


def _id_value(f: Field) -> Any:
    """An id: 4294967295 and unquoted nil texts are nil, another number an int; anything
    else leaves the key out."""
    number = parse_u64(f.value)
    if number is not None:
        return None if number == UNSET_ID else number
    return None if f.is_nil else _ABSENT


def _uint_value(f: Field) -> Any:
    number = parse_u64(f.value)
    return _ABSENT if number is None else number


def _res_value(f: Field) -> Any:
    """res: 1 and 0 are mapped to success and failed; CHOICE: an unquoted nil text is nil."""
    if f.is_nil:
        return None
    if f.value == b"1":
        return "success"
    if f.value == b"0":
        return "failed"
    return text_value(f.value)


def _first_uint(items: list[Field], name: bytes, parse: Any = None) -> int | None:
    """The first field called name whose value parses (decimal unless parse is given)."""
    for f in items:
        if f.key == name:
            value = (parse or parse_u64)(f.value)
            if value is not None:
                return int(value)
    return None


def _first(items: list[Field], name: bytes) -> Field | None:
    for f in items:
        if f.key == name:
            return f
    return None


class _Shape:
    """One pass over an event's kept records: their fields (split once) and what the typing
    needs."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.fields: list[list[Field]] = []
        self.free_text: list[bool] = []
        self.overflow = False  # a record over MAX_FIELDS, or the SYSCALL over its cap
        self.syscall: list[Field] | None = None
        self.has_execve = False
        self.cwd: int | None = None  # indexes into records
        self.sockaddr: int | None = None
        self.proctitle: int | None = None
        self.socketcall: int | None = None
        self.principal: int | None = None
        for i, rec in enumerate(records):
            items, free_text = split_fields(rec.text)
            if len(items) > MAX_FIELDS:
                del items[MAX_FIELDS:]
                self.overflow = True
            self.fields.append(items)
            self.free_text.append(free_text)
            t = rec.type
            if t == T_SYSCALL:
                if self.syscall is None:
                    self.syscall = items[:MAX_SYSCALL_FIELDS]
                    if len(items) > MAX_SYSCALL_FIELDS:
                        self.overflow = True
            elif t == T_EXECVE:
                self.has_execve = True
            elif t == T_CWD and self.cwd is None:
                self.cwd = i
            elif t == T_SOCKADDR and self.sockaddr is None:
                self.sockaddr = i
            elif t == T_PROCTITLE and self.proctitle is None:
                self.proctitle = i
            elif t == T_SOCKETCALL and self.socketcall is None:
                self.socketcall = i
            if t not in _AUX_TYPES and self.principal is None:
                self.principal = i
        self.arch: int | None = None
        self.syscall_nr: int | None = None
        self.syscall_name: str | None = None
        if self.syscall is not None:
            arch = _first_uint(self.syscall, b"arch", parse_hex_u64)
            if arch is not None and arch <= 0xFFFFFFFF:
                self.arch = arch
            self.syscall_nr = _first_uint(self.syscall, b"syscall")
            if self.arch is not None and self.syscall_nr is not None:
                self.syscall_name = syscall_name(self.arch, self.syscall_nr)


def _net_direction(shape: _Shape) -> str | None:
    name = shape.syscall_name
    if name in _NET_DIR:
        return _NET_DIR[name]
    if name == "socketcall" and shape.syscall is not None:
        # The call number is the SYSCALL record's a0 (hex); SOCKETCALL holds its arguments.
        call = _first_uint(shape.syscall, b"a0", parse_hex_u64)
        return _SOCKETCALL_DIR.get(call if call is not None else -1)
    return None


def _classify(shape: _Shape) -> tuple[str, str | None]:
    if shape.has_execve or shape.syscall_name in ("execve", "execveat"):
        return "exec", None
    direction = _net_direction(shape)
    if direction is not None:
        return "net", direction
    if shape.principal is not None:
        name = RECORD_TYPES.get(shape.records[shape.principal].type)
        if name is not None:
            if name in AUTH_TYPES or name.startswith("ANOM_LOGIN_"):
                return "auth", None
            if name in ACCOUNT_TYPES:
                return "account", None
            if name in AUDITCFG_TYPES:
                return "auditcfg", None
    return "audit", None


def _put_process(ev: Event, shape: _Shape) -> None:
    """The process keys from the first SYSCALL record, its fields in order."""
    if shape.syscall is None:
        return
    for f in shape.syscall:
        key = f.key
        if key == b"arch":
            known = ARCHES.get(shape.arch) if shape.arch is not None else None
            if known is not None:
                _put(ev, "arch", known)
            else:  # CHOICE: an unquoted nil text is nil, else the value as written
                _put(ev, "arch", None if f.is_nil else text_value(f.value))
        elif key == b"syscall":
            if shape.syscall_name is not None:
                _put(ev, "sc", shape.syscall_name)
            elif shape.syscall_nr is not None:
                _put(ev, "sc", shape.syscall_nr)
        elif key == b"success":
            _put(ev, "ok", f.value == b"yes")
        elif key == b"exit":
            rc = parse_i64(f.value)
            if rc is not None:
                _put(ev, "rc", rc)
        elif key in _PROCESS_UINTS:
            _put(ev, _PROCESS_UINTS[key], _uint_value(f))
        elif key in _PROCESS_IDS:
            _put(ev, _PROCESS_IDS[key], _id_value(f))
        elif key in _PROCESS_TEXTS:
            _put(ev, key.decode(), field_text(f, _PROCESS_TEXTS[key]))


_PROCESS_UINTS = {b"pid": "pid", b"ppid": "ppid"}
_PROCESS_IDS = {k.encode(): k for k in ("uid", "gid", "euid", "egid", "auid", "ses")}
_PROCESS_TEXTS = {b"comm": True, b"exe": True, b"tty": False, b"key": True}  # -> hexable


def _put_cwd(ev: Event, shape: _Shape) -> None:
    if shape.cwd is not None:
        f = _first(shape.fields[shape.cwd], b"cwd")
        if f is not None:
            _put(ev, "cwd", field_text(f, True))


# The principal record's keys (auth, account, auditcfg): field name -> (key, how).
_STR, _HEXSTR, _ID, _UINT, _RES = range(5)
_PRINCIPAL_KEYS: dict[bytes, tuple[str, int]] = {
    b"op": ("op", _STR),
    b"acct": ("acct", _HEXSTR),
    b"id": ("id", _ID),
    b"exe": ("exe", _HEXSTR),
    b"hostname": ("host", _HEXSTR),
    b"addr": ("addr", _STR),
    b"terminal": ("term", _STR),
    b"res": ("res", _RES),
    b"result": ("res", _RES),
    b"grantors": ("grantors", _STR),
    b"pid": ("pid", _UINT),
    b"uid": ("uid", _ID),
    b"auid": ("auid", _ID),
    b"ses": ("ses", _ID),
    b"old-auid": ("old_auid", _ID),
    b"old-ses": ("old_ses", _ID),
    b"key": ("key", _HEXSTR),
    b"list": ("list", _UINT),
}


def _put_principal(ev: Event, items: list[Field]) -> None:
    """CHOICE: op, grantors, addr, term (and res) follow section 5: an unquoted nil text is
    nil."""
    for f in items:
        entry = _PRINCIPAL_KEYS.get(f.key)
        if entry is None:
            continue
        out, how = entry
        if how == _STR:
            _put(ev, out, field_text(f))
        elif how == _HEXSTR:
            _put(ev, out, field_text(f, True))
        elif how == _ID:
            _put(ev, out, _id_value(f))
        elif how == _UINT:
            _put(ev, out, _uint_value(f))
        else:
            _put(ev, out, _res_value(f))


def _argv_key(key: bytes) -> tuple[int, int] | None:
    """'aN' -> (0, N), 'aN_len' -> (1, N), 'aN[k]' -> (2, N); None for other keys."""
    if len(key) < 2 or key[0] != 0x61 or not 0x30 <= key[1] <= 0x39:
        return None
    i = 1
    while i < len(key) and 0x30 <= key[i] <= 0x39:
        i += 1
    index = parse_u64(key[1:i])
    if index is None:
        return None
    rest = key[i:]
    if not rest:
        return 0, index
    if rest == b"_len":
        return 1, index
    if len(rest) > 2 and rest[0] == 0x5B and rest[-1] == 0x5D and parse_u64(rest[1:-1]) is not None:
        return 2, index
    return None


def _argv_bytes(f: Field) -> bytes:
    """An EXECVE argument or chunk: hex-decoded when unquoted valid hex, else as written (an
    unquoted '(null)' is the literal text, for chunks too)."""
    if f.kind == PLAIN and is_hex(f.value):
        return bytes.fromhex(f.value.decode("ascii"))
    return f.value


def _argv(shape: _Shape, max_bytes: int) -> tuple[int | None, list[Text], bool]:
    """(argc, argv, incomplete): whole arguments in index order from a0, aN_len opening a
    chunked one whose aN[k] chunks follow (k is not checked); an argument out of order, a
    chunk of another argument, or an argument over max_bytes stops argv there. A chunked
    argument is kept only whole: its chunks as long as its aN_len says (when that is a
    number; as logged: hex digits when hex-encoded), else when nothing broke it; a piece of
    it would read as the argument itself."""
    argc: int | None = None
    argv: list[bytes] = []
    expect = 0
    chunk_arg: int | None = None
    chunk = bytearray()
    chunk_text = 0  # the chunks' length as logged
    chunk_want: int | None = None
    broken = False

    def finish_chunk() -> None:
        nonlocal chunk_arg, chunk_text, broken
        if chunk_arg is not None:
            if (chunk_text != chunk_want) if chunk_want is not None else broken:
                broken = True
            else:
                argv.append(bytes(chunk))
            chunk_arg = None
            chunk.clear()
            chunk_text = 0

    for rec, items in zip(shape.records, shape.fields):
        if rec.type != T_EXECVE:
            continue
        for f in items:
            if f.key == b"argc":
                if argc is None:
                    argc = parse_u64(f.value)
                continue
            form = _argv_key(f.key)
            if form is None or broken:
                continue
            kind, index = form
            if kind == 2:
                piece = _argv_bytes(f)
                if index != chunk_arg or len(chunk) + len(piece) > max_bytes:
                    broken = True
                else:
                    chunk += piece
                    chunk_text += len(f.value)
                continue
            finish_chunk()
            if index != expect:
                broken = True
                continue
            expect += 1
            if kind == 1:
                chunk_arg = index
                chunk_want = parse_u64(f.value)
                continue
            whole = _argv_bytes(f)
            if len(whole) > max_bytes:
                broken = True
            else:
                argv.append(whole)
    finish_chunk()
    incomplete = broken or (argc is not None and len(argv) < argc)
    return argc, [text_value(a) for a in argv], incomplete


def _paths(shape: _Shape) -> list[Event]:
    """A map per PATH record, in arrival order (the kernel writes them in item order)."""
    out: list[Event] = []
    for rec, items in zip(shape.records, shape.fields):
        if rec.type != T_PATH:
            continue
        item: Event = {}
        f = _first(items, b"name")
        if f is not None:
            item["n"] = field_text(f, True)
        f = _first(items, b"nametype")
        if f is not None:
            item["nt"] = text_value(f.value)  # as written
        ino = _first_uint(items, b"inode")
        if ino is not None:
            item["ino"] = ino
        mode = _first_uint(items, b"mode", parse_octal)
        if mode is not None:
            item["mode"] = mode
        out.append(item)
    return out


def _title(items: list[Field]) -> list[Text] | None:
    """PROCTITLE split at NUL, one trailing empty part dropped."""
    f = _first(items, b"proctitle")
    if f is None:
        return None
    data = field_bytes(f, True)
    if data is None:
        return None
    parts = data.split(b"\0")
    if parts[-1] == b"":
        parts.pop()
    return [text_value(p) for p in parts]


def _put_sockaddr(ev: Event, items: list[Field], direction: str) -> None:
    f = _first(items, b"saddr")
    if f is None or not is_hex(f.value):
        return
    b = bytes.fromhex(f.value.decode("ascii"))
    if len(b) < 2:
        return
    le = b[0] | b[1] << 8
    be = b[0] << 8 | b[1]
    big_endian = le not in _FAMILIES and be in _FAMILIES
    family = be if big_endian else le
    addr_key, port_key = ("laddr", "lport") if direction == "bind" else ("raddr", "rport")
    name = _FAMILIES.get(family)
    ev["fam"] = name if name is not None else family
    if family == 2 and len(b) >= 8:
        ev[addr_key] = ".".join(str(x) for x in b[4:8])
        ev[port_key] = b[2] << 8 | b[3]
    elif family == 10 and len(b) >= 24:
        ev[addr_key] = format_ipv6(b[8:24])
        ev[port_key] = b[2] << 8 | b[3]
    elif family == 1:
        path = b[2:]
        if path[:1] == b"\0":  # abstract: "@" then the name, trailing NULs dropped
            ev["path"] = text_value(b"@" + path[1:].rstrip(b"\0"))
        else:
            nul = path.find(b"\0")
            ev["path"] = text_value(path if nul < 0 else path[:nul])
    elif family == 16 and len(b) >= 12:
        if big_endian:
            ev["nlpid"] = int.from_bytes(b[4:8], "big")
            ev["nlgroups"] = int.from_bytes(b[8:12], "big")
        else:
            ev["nlpid"] = int.from_bytes(b[4:8], "little")
            ev["nlgroups"] = int.from_bytes(b[8:12], "little")


def _generic_value(f: Field) -> Text | None:
    if f.key in ID_FIELDS and parse_u64(f.value) == UNSET_ID:
        return None
    return field_text(f, f.key in HEX_FIELDS)


def _recs(shape: _Shape) -> list[Event]:
    out: list[Event] = []
    for rec, items, free_text in zip(shape.records, shape.fields, shape.free_text):
        values: dict[Text, Text | None] = {}
        for f in items:
            key = text_value(f.key)
            if key not in values:
                values[key] = _generic_value(f)
        entry: Event = {"type": record_type_name(rec.type), "f": values}
        if free_text:
            entry["text"] = text_value(rec.text)
        out.append(entry)
    return out


def _common(ev: OpenEvent, shape: _Shape, kind: str, with_node: bool) -> Event:
    out: Event = {"t": kind, "ts": ev.ts, "sn": ev.serial}
    if shape.syscall is not None:
        out["rt"] = "SYSCALL"
    else:  # the first record (always kept: a new event's first record always fits)
        out["rt"] = record_type_name(ev.records[0].type if ev.records else ev.first_type)
    if with_node and ev.node is not None:
        out["node"] = text_value(ev.node)
    return out


def build_event(ev: OpenEvent, limit: int, max_value_bytes: int) -> tuple[Event, bool]:
    """The event's map, at most `limit` bytes encoded, and whether it carries trunc."""
    shape = _Shape(ev.records)
    kind, direction = _classify(shape)
    out = _common(ev, shape, kind, True)
    cut = ev.truncated or shape.overflow
    if kind in ("auth", "account", "auditcfg") and shape.principal is not None:
        _put_principal(out, shape.fields[shape.principal])
    _put_process(out, shape)
    _put_cwd(out, shape)
    if kind == "exec":
        if shape.has_execve:
            argc, argv, incomplete = _argv(shape, max_value_bytes)
            if argc is not None:
                out["argc"] = argc
            out["argv"] = argv
            cut = cut or incomplete
        paths = _paths(shape)
        if paths:
            out["paths"] = paths
        if not shape.has_execve and shape.proctitle is not None:
            title = _title(shape.fields[shape.proctitle])
            if title is not None:
                out["title"] = title
    elif kind == "net":
        assert direction is not None
        out["dir"] = direction
        if shape.sockaddr is not None:
            _put_sockaddr(out, shape.fields[shape.sockaddr], direction)
    elif kind == "audit":
        out["recs"] = _recs(shape)
    if cut:
        out["trunc"] = True
    if packed_size(out) <= limit:
        return out, cut
    # The minimal form: common keys, process keys, argc, trunc; if even that is too big,
    # CHOICE (as the core): t, ts, sn, rt and trunc only.
    minimal = _common(ev, shape, kind, True)
    _put_process(minimal, shape)
    if kind == "exec":
        argc = None
        for rec, items in zip(shape.records, shape.fields):
            if rec.type == T_EXECVE and argc is None:
                argc = _first_uint(items, b"argc")
        if argc is not None:
            minimal["argc"] = argc
    minimal["trunc"] = True
    if packed_size(minimal) <= limit:
        return minimal, True
    bare = _common(ev, shape, kind, False)
    bare["trunc"] = True
    return bare, True


# ---------------------------------------------------------------------------------------------
# loss accounting (docs/audit-parsing.md section 4)


class LossTracker:
    """A window of LOSS_WINDOW serials from the first one seen."""

    def __init__(self, serial: int) -> None:
        self.base = serial
        self.marks = bytearray(LOSS_WINDOW)  # ring, by serial % LOSS_WINDOW
        self.marked = 0
        self.highest = serial

    def mark(self, serial: int) -> tuple[int, int]:
        """(duplicates, gaps) that this serial adds."""
        if serial < self.base:
            return 0, 0
        gaps = 0
        if serial >= self.base + LOSS_WINDOW:
            new_base = serial - LOSS_WINDOW + 1
            leaving = new_base - self.base
            for s in range(self.base, self.base + min(leaving, LOSS_WINDOW)):
                slot = s % LOSS_WINDOW
                if self.marks[slot]:
                    self.marks[slot] = 0
                    self.marked -= 1
                else:
                    gaps += 1
            if leaving > LOSS_WINDOW:
                gaps += leaving - LOSS_WINDOW  # serials that never entered the window
            self.base = new_base
        self.highest = max(self.highest, serial)
        slot = serial % LOSS_WINDOW
        if self.marks[slot]:
            return 1, gaps
        self.marks[slot] = 1
        self.marked += 1
        return 0, gaps

    def final_gaps(self) -> int:
        """Unmarked serials from the window start to the highest serial seen; the window then
        starts after the highest, so that a later flush does not count them again."""
        gaps = self.highest - self.base + 1 - self.marked
        if gaps >= 0:
            self.marks = bytearray(LOSS_WINDOW)
            self.marked = 0
            self.base = self.highest + 1
        return max(gaps, 0)


# ---------------------------------------------------------------------------------------------
# the parser


class ReferenceAuditParser:
    """Audit log text or netlink records in, event dicts out (docs/events.md).

    Every method returns the events that completed, in completion order.
    """

    def __init__(self, options: ReferenceOptions | None = None) -> None:
        self.options = options if options is not None else ReferenceOptions()
        self._counters = dict.fromkeys(STAT_NAMES, 0)
        self._partial = bytearray()
        self._skipping = False  # inside a line already known to be too long
        self._open: dict[_Key, OpenEvent] = {}  # creation order
        self._pending = 0
        self._stream = 0
        self._trackers: dict[_Node, LossTracker] = {}
        self._batch: int | None = None  # bytes of the open batch, None when none is open
        self._out: list[Event] = []

    # -- input --

    def feed(self, data: bytes) -> list[Event]:
        """Log text in any chunking (a partial last line waits for the next call)."""
        self._counters["bytes"] += len(data)
        limit = self.options.max_line_bytes + 1  # room for a '\r' before the newline
        start = 0
        n = len(data)
        while start < n:
            nl = data.find(b"\n", start)
            stop = n if nl < 0 else nl
            if not self._skipping:
                self._partial += data[start:stop]
                if len(self._partial) > limit:
                    self._skipping = True
                    self._partial.clear()
            if nl < 0:
                break
            self._end_line()
            start = nl + 1
        return self._take()

    def feed_record(self, record_type: int, payload: bytes) -> list[Event]:
        """One record as netlink delivers it: message type and text."""
        if not 0 <= record_type <= 0xFFFF:
            raise ValueError(f"record type {record_type} is out of range")
        self._counters["bytes"] += len(payload)
        self._counters["lines"] += 1
        if len(payload) > self.options.max_line_bytes:
            self._counters["long_lines"] += 1
        else:
            rec = parse_payload(record_type, payload)
            if rec is None:
                self._counters["malformed"] += 1
            else:
                self._record(rec)
        return self._take()

    def expire(self, now_ms: int) -> list[Event]:
        """Complete, oldest first, every open event idle for more than timeout_ms before now."""
        for ev in list(self._open.values()):
            if now_ms - ev.seen > self.options.timeout_ms:
                self._complete(ev, "timeouts")
        return self._take()

    def seal(self) -> list[Event]:
        self._seal()
        return self._take()

    def flush(self) -> list[Event]:
        """End of input: the unterminated last line, then every open event, oldest first."""
        if self._partial or self._skipping:
            self._end_line()
        for ev in list(self._open.values()):
            self._complete(ev, None)
        for tracker in self._trackers.values():
            self._counters["gaps"] += tracker.final_gaps()
        self._seal()
        return self._take()

    def stats(self) -> dict[str, int]:
        return dict(self._counters)

    # -- lines and records --

    def _end_line(self) -> None:
        c = self._counters
        c["lines"] += 1
        if self._skipping:
            self._skipping = False
            c["long_lines"] += 1
            return
        line = bytes(self._partial)
        self._partial.clear()
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.options.max_line_bytes:
            c["long_lines"] += 1
            return
        if not line.strip(b" \t"):
            return
        rec = parse_line(line)
        if rec is None:
            c["malformed"] += 1
            return
        self._record(rec)

    def _record(self, rec: Record) -> None:
        opts = self.options
        self._counters["records"] += 1
        self._stream = max(self._stream, rec.ts)
        key = (rec.node, rec.serial)
        if rec.type == T_EOE:
            done = self._open.get(key)
            if done is not None:
                self._complete(done, None)
        else:
            ev = self._open.get(key)
            if ev is None:
                if len(self._open) >= opts.max_in_flight:
                    self._complete(next(iter(self._open.values())), "forced")
                ev = self._new_event(key, rec)
            ev.seen = self._stream  # aged by arrival: a record carries its syscall's entry time
            size = len(rec.text) + RECORD_COST
            if ev.kept + size > opts.max_event_bytes:
                ev.truncated = True
            else:
                while self._pending + size > opts.max_pending_bytes and self._pending > 0:
                    oldest = next(iter(self._open.values()))
                    self._complete(oldest, "forced")
                    if oldest is ev:
                        ev = self._new_event(key, rec)
                if self._pending + size > opts.max_pending_bytes:
                    ev.truncated = True  # the record alone is over the bound
                else:
                    ev.records.append(rec)
                    ev.kept += size
                    self._pending += size
            t = rec.type
            if t == T_PROCTITLE or 1100 <= t <= 1299 or 2100 <= t <= 2999:
                self._complete(ev, None)
        while self._open:
            oldest = next(iter(self._open.values()))
            if self._stream - oldest.seen <= opts.timeout_ms:
                break
            self._complete(oldest, "timeouts")

    def _new_event(self, key: _Key, rec: Record) -> OpenEvent:
        ev = OpenEvent(rec)
        ev.seen = self._stream
        self._open[key] = ev
        return ev

    # -- completion and output --

    def _complete(self, ev: OpenEvent, counter: str | None) -> None:
        c = self._counters
        del self._open[(ev.node, ev.serial)]
        self._pending -= ev.kept
        if counter is not None:
            c[counter] += 1
        limit = self.options.batch_bytes - BATCH_HEADER
        event, cut = build_event(ev, limit, self.options.max_event_bytes)
        c["events"] += 1
        if cut:
            c["truncated"] += 1
        if not 1200 <= ev.first_type <= 1299:
            self._track(ev.node, ev.serial)
        size = packed_size(event)
        if self._batch is not None and self._batch + size > self.options.batch_bytes:
            self._seal()
        if self._batch is None:
            self._batch = BATCH_HEADER
        self._batch += size
        self._out.append(event)

    def _track(self, node: _Node, serial: int) -> None:
        tracker = self._trackers.get(node)
        if tracker is None:
            if len(self._trackers) >= LOSS_NODES:
                return
            self._trackers[node] = tracker = LossTracker(serial)
        duplicates, gaps = tracker.mark(serial)
        self._counters["duplicates"] += duplicates
        self._counters["gaps"] += gaps

    def _seal(self) -> None:
        if self._batch is not None:
            self._counters["batches"] += 1
            self._batch = None

    def _take(self) -> list[Event]:
        out, self._out = self._out, []
        return out
