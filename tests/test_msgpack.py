"""The core's msgpack writer (native/msgpack.c) through agent.native.MsgpackWriter: every size
boundary of every type, the capped buffer (a write that does not fit writes nothing), and
random nested documents, all checked by decoding with msgpack-python and against its own
encoding (which also picks the smallest form)."""

from __future__ import annotations

import math
import struct
from typing import Any, Callable, Union

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.native import CoreArgumentError, CoreError, CoreFullError, MsgpackWriter

Value = Union[None, bool, int, float, str, bytes, list[Any], dict[Any, Any]]
Write = Callable[[MsgpackWriter], None]

BIG = 1 << 20


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def write_value(w: MsgpackWriter, value: Value) -> None:
    """Write a Python value the way an encoder would: bytes as bin, str as str."""
    if value is None:
        w.write_nil()
    elif isinstance(value, bool):
        w.write_bool(value)
    elif isinstance(value, int):
        w.write_int(value)
    elif isinstance(value, float):
        w.write_float(value)
    elif isinstance(value, str):
        w.write_str(value)
    elif isinstance(value, bytes):
        w.write_bin(value)
    elif isinstance(value, list):
        w.write_array(len(value))
        for item in value:
            write_value(w, item)
    elif isinstance(value, dict):
        w.write_map(len(value))
        for key, item in value.items():
            write_value(w, key)
            write_value(w, item)
    else:
        raise TypeError(type(value))


def encode(value: Value, cap: int = BIG) -> bytes:
    w = MsgpackWriter(cap)
    write_value(w, value)
    return w.getvalue()


def packb(value: Value) -> bytes:
    data = msgpack.packb(value, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def check(value: Value, header: bytes, cap: int = BIG) -> bytes:
    """Encode value; its first bytes are `header`, msgpack-python encodes it the same way and
    decodes it back to value."""
    data = encode(value, cap)
    assert data[: len(header)] == header
    assert data == packb(value)
    assert unpack(data) == value
    return data


# ---------------------------------------------------------------------------------------------
# scalars


def test_nil_and_bools() -> None:
    assert check(None, b"\xc0") == b"\xc0"
    assert check(False, b"\xc2") == b"\xc2"
    assert check(True, b"\xc3") == b"\xc3"


INTS = [
    (0, b"\x00", 1), (1, b"\x01", 1), (127, b"\x7f", 1),
    (128, b"\xcc\x80", 2), (255, b"\xcc\xff", 2),
    (256, b"\xcd\x01\x00", 3), (65535, b"\xcd\xff\xff", 3),
    (65536, b"\xce\x00\x01\x00\x00", 5), (2**32 - 1, b"\xce\xff\xff\xff\xff", 5),
    (2**32, b"\xcf\x00\x00\x00\x01\x00\x00\x00\x00", 9), (2**63, b"\xcf\x80", 9),
    (2**64 - 1, b"\xcf" + b"\xff" * 8, 9),
    (-1, b"\xff", 1), (-32, b"\xe0", 1),
    (-33, b"\xd0\xdf", 2), (-128, b"\xd0\x80", 2),
    (-129, b"\xd1\xff\x7f", 3), (-32768, b"\xd1\x80\x00", 3),
    (-32769, b"\xd2\xff\xff\x7f\xff", 5), (-(2**31), b"\xd2\x80\x00\x00\x00", 5),
    (-(2**31) - 1, b"\xd3\xff\xff\xff\xff\x7f\xff\xff\xff", 9),
    (-(2**63), b"\xd3\x80" + b"\x00" * 7, 9),
]


@pytest.mark.parametrize(("value", "header", "size"), INTS, ids=[str(i[0]) for i in INTS])
def test_int(value: int, header: bytes, size: int) -> None:
    data = check(value, header)
    assert len(data) == size
    assert type(unpack(data)) is int


@pytest.mark.parametrize("value", [2**64, 2**70, -(2**63) - 1, -(2**80)])
def test_int_out_of_range(value: int) -> None:
    w = MsgpackWriter(64)
    w.write_nil()
    with pytest.raises(OverflowError):
        w.write_int(value)
    assert w.getvalue() == b"\xc0"


@pytest.mark.parametrize("value", [0.0, -0.0, 1.5, -2.25, 1e308, -1e-308, 5e-324, math.pi,
                                   math.inf, -math.inf, 2.0**64])
def test_float(value: float) -> None:
    data = check(value, b"\xcb")
    assert data == b"\xcb" + struct.pack(">d", value)
    assert math.copysign(1.0, unpack(data)) == math.copysign(1.0, value)


def test_float_nan() -> None:
    data = encode(math.nan)
    assert len(data) == 9
    assert data[0] == 0xCB
    assert math.isnan(unpack(data))
    assert data == b"\xcb" + struct.pack(">d", math.nan)


# ---------------------------------------------------------------------------------------------
# str / bin / array / map at every boundary


def str_header(n: int) -> bytes:
    if n < 32:
        return bytes([0xA0 | n])
    if n <= 0xFF:
        return bytes([0xD9, n])
    if n <= 0xFFFF:
        return b"\xda" + n.to_bytes(2, "big")
    return b"\xdb" + n.to_bytes(4, "big")


def bin_header(n: int) -> bytes:
    if n <= 0xFF:
        return bytes([0xC4, n])
    if n <= 0xFFFF:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def container_header(n: int, fix: int, tag16: int, tag32: int) -> bytes:
    if n < 16:
        return bytes([fix | n])
    if n <= 0xFFFF:
        return bytes([tag16]) + n.to_bytes(2, "big")
    return bytes([tag32]) + n.to_bytes(4, "big")


STR_LENGTHS = [0, 1, 31, 32, 255, 256, 65535, 65536, 70000]
BIN_LENGTHS = [0, 1, 255, 256, 65535, 65536, 70000]
COUNTS = [0, 1, 15, 16, 65535, 65536]


@pytest.mark.parametrize("n", STR_LENGTHS)
def test_str(n: int) -> None:
    value = "".join(chr(0x61 + i % 26) for i in range(n))
    data = check(value, str_header(n))
    assert len(data) == len(str_header(n)) + n


@pytest.mark.parametrize("n", [31, 32, 255, 256, 65535, 65536])
def test_str_length_counts_utf8_bytes(n: int) -> None:
    """The header carries the UTF-8 byte length: 'é' is two bytes, '€' three."""
    value = "é" * (n // 2) + "a" * (n % 2)
    assert len(value.encode()) == n
    check(value, str_header(n))
    if n % 3 == 0:
        check("€" * (n // 3), str_header(n))


@pytest.mark.parametrize("n", BIN_LENGTHS)
def test_bin(n: int) -> None:
    value = bytes(i % 251 for i in range(n))
    data = check(value, bin_header(n))
    assert len(data) == len(bin_header(n)) + n


def test_bin_with_nul_and_high_bytes() -> None:
    check(b"\x00\xff\x00\xc0", b"\xc4\x04")


@pytest.mark.parametrize("n", COUNTS)
def test_array(n: int) -> None:
    data = check([None] * n, container_header(n, 0x90, 0xDC, 0xDD))
    assert len(data) == len(container_header(n, 0x90, 0xDC, 0xDD)) + n


@pytest.mark.parametrize("n", COUNTS)
def test_map(n: int) -> None:
    value: dict[Any, Any] = dict.fromkeys(range(n))
    check(value, container_header(n, 0x80, 0xDE, 0xDF))


@pytest.mark.parametrize("n", [2**32 - 1, 2**31, 70000])
def test_container_headers_only(n: int) -> None:
    """Counts too large to fill: the header alone is right (array32 / map32)."""
    w = MsgpackWriter(16)
    w.write_array(n)
    w.write_map(n)
    assert w.getvalue() == container_header(n, 0x90, 0xDC, 0xDD) + container_header(
        n, 0x80, 0xDE, 0xDF)


@pytest.mark.parametrize("n", [-1, 2**32])
def test_container_count_out_of_range(n: int) -> None:
    w = MsgpackWriter(16)
    with pytest.raises(OverflowError):
        w.write_array(n)
    with pytest.raises(OverflowError):
        w.write_map(n)
    assert w.getvalue() == b""


def test_nested_document() -> None:
    value: Value = {"type": "SYSCALL", "seq": 2**40, "ok": True, "argv": ["/bin/sh", "-c"],
                    "raw": b"\x00\x01", "t": 1.5, "none": None, "map": {1: [], -1: {}}}
    assert encode(value) == packb(value)
    assert unpack(encode(value)) == value


# ---------------------------------------------------------------------------------------------
# the capped buffer

ITEMS: list[tuple[str, Write, bytes]] = [
    ("nil", lambda w: w.write_nil(), b"\xc0"),
    ("true", lambda w: w.write_bool(True), b"\xc3"),
    ("fixint", lambda w: w.write_int(5), b"\x05"),
    ("negfixint", lambda w: w.write_int(-5), b"\xfb"),
    ("uint8", lambda w: w.write_int(200), packb(200)),
    ("uint16", lambda w: w.write_int(60000), packb(60000)),
    ("uint32", lambda w: w.write_int(2**32 - 1), packb(2**32 - 1)),
    ("uint64", lambda w: w.write_int(2**64 - 1), packb(2**64 - 1)),
    ("int8", lambda w: w.write_int(-100), packb(-100)),
    ("int16", lambda w: w.write_int(-30000), packb(-30000)),
    ("int32", lambda w: w.write_int(-(2**31)), packb(-(2**31))),
    ("int64", lambda w: w.write_int(-(2**63)), packb(-(2**63))),
    ("float", lambda w: w.write_float(0.5), packb(0.5)),
    ("fixstr0", lambda w: w.write_str(""), b"\xa0"),
    ("fixstr", lambda w: w.write_str("abc"), b"\xa3abc"),
    ("str8", lambda w: w.write_str("x" * 40), packb("x" * 40)),
    ("str16", lambda w: w.write_str("y" * 300), packb("y" * 300)),
    ("str32", lambda w: w.write_str("z" * 65536), packb("z" * 65536)),
    ("bin8empty", lambda w: w.write_bin(b""), b"\xc4\x00"),
    ("bin8", lambda w: w.write_bin(b"\x01\x02"), b"\xc4\x02\x01\x02"),
    ("bin16", lambda w: w.write_bin(b"\x03" * 256), packb(b"\x03" * 256)),
    ("bin32", lambda w: w.write_bin(b"\x04" * 65536), packb(b"\x04" * 65536)),
    ("fixarray", lambda w: w.write_array(3), b"\x93"),
    ("array16", lambda w: w.write_array(16), b"\xdc\x00\x10"),
    ("array32", lambda w: w.write_array(65536), b"\xdd\x00\x01\x00\x00"),
    ("fixmap", lambda w: w.write_map(1), b"\x81"),
    ("map16", lambda w: w.write_map(300), b"\xde\x01\x2c"),
    ("map32", lambda w: w.write_map(2**32 - 1), b"\xdf\xff\xff\xff\xff"),
]
ITEM_IDS = [item[0] for item in ITEMS]
PREFIX = b"\x92\xa2hi"  # something already in the buffer


def start(cap: int) -> MsgpackWriter:
    w = MsgpackWriter(cap)
    w.write_array(2)
    w.write_str("hi")
    assert w.getvalue() == PREFIX
    return w


@pytest.mark.parametrize(("name", "write", "expected"), ITEMS, ids=ITEM_IDS)
def test_capped_exact_fit(name: str, write: Write, expected: bytes) -> None:
    w = start(len(PREFIX) + len(expected))
    write(w)
    assert w.getvalue() == PREFIX + expected
    with pytest.raises(CoreFullError):
        w.write_nil()  # and now it is full
    assert w.getvalue() == PREFIX + expected


@pytest.mark.parametrize(("name", "write", "expected"), ITEMS, ids=ITEM_IDS)
def test_capped_short(name: str, write: Write, expected: bytes) -> None:
    """Every shortfall, from one byte (a str whose header fits but not its last byte) to the
    whole item, writes nothing; the room that is left still takes a smaller item."""
    for short in sorted({1, 2, len(expected) // 2, len(expected)}):
        if not 1 <= short <= len(expected):
            continue
        w = start(len(PREFIX) + len(expected) - short)
        with pytest.raises(CoreFullError):
            write(w)
        assert w.getvalue() == PREFIX
        if short < len(expected):
            w.write_nil()
            assert w.getvalue() == PREFIX + b"\xc0"


def test_capped_zero() -> None:
    w = MsgpackWriter(0)
    for _, write, _ in ITEMS:
        with pytest.raises(CoreFullError):
            write(w)
        assert w.getvalue() == b""


def test_full_error_is_a_core_error() -> None:
    w = MsgpackWriter(1)
    with pytest.raises(CoreError):
        w.write_str("ab")


def test_reset_gives_the_room_back() -> None:
    w = MsgpackWriter(4)
    w.write_str("abc")
    with pytest.raises(CoreFullError):
        w.write_nil()
    w.reset()
    assert w.getvalue() == b""
    w.write_bin(b"xy")
    assert w.getvalue() == b"\xc4\x02xy"


def test_fill_to_the_last_byte() -> None:
    """A run of writes that fills a small buffer exactly; each failure on the way changes
    nothing."""
    cap = 37
    w = MsgpackWriter(cap)
    expected = b""
    i = 0
    while True:
        item = "s" * (i % 7)
        try:
            w.write_str(item)
        except CoreFullError:
            assert w.getvalue() == expected
            break
        expected += packb(item)
        assert w.getvalue() == expected
        i += 1
    for _ in range(cap - len(expected)):
        w.write_nil()
    assert len(w.getvalue()) == cap
    with pytest.raises(CoreFullError):
        w.write_nil()


def test_negative_cap() -> None:
    with pytest.raises(CoreArgumentError):
        MsgpackWriter(-1)


def test_cap_above_4gib_is_refused() -> None:
    with pytest.raises(CoreError):
        MsgpackWriter(2**32 + 1)


# ---------------------------------------------------------------------------------------------
# random documents

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
KEYS = st.text() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.binary()
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=20) | st.dictionaries(KEYS, children,
                                                                       max_size=20),
    max_leaves=60,
)


@given(DOCUMENTS)
@settings(max_examples=300, deadline=None)
def test_random_documents_round_trip(value: Value) -> None:
    data = encode(value)
    assert data == packb(value)
    assert unpack(data) == value


@given(st.lists(SCALARS, max_size=30), st.integers(min_value=0, max_value=300))
@settings(max_examples=300, deadline=None)
def test_random_writes_into_a_capped_buffer(items: list[Value], cap: int) -> None:
    """Each item goes in if it fits and changes nothing if it does not."""
    w = MsgpackWriter(cap)
    expected = b""
    written = []
    for item in items:
        encoded = packb(item)
        if len(expected) + len(encoded) <= cap:
            write_value(w, item)
            expected += encoded
            written.append(item)
        else:
            with pytest.raises(CoreFullError):
                write_value(w, item)
        assert w.getvalue() == expected
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(expected)
    assert list(unpacker) == written
