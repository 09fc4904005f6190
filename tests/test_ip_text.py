"""am_ip_text (native/ip_text.c), the core's one formatter of addresses, side by side with the C
library's inet_ntop(3) through socket.inet_ntop: the same text for every IPv4 address byte
and for IPv6 addresses built to hit each rule (zero runs of every length and place, ties,
IPv4-mapped and IPv4-compatible forms), and its bounds."""

from __future__ import annotations

import itertools
import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from agent._core import ffi, lib


def ip_text(version: int, addr: bytes, cap: int = 46) -> tuple[int, str]:
    out = ffi.new("char[]", max(cap, 1))
    n = lib.am_ip_text(version, addr, out, cap)
    return n, ffi.string(out).decode() if n >= 0 else ""


def test_every_ipv4_byte_in_every_place() -> None:
    for place, value in itertools.product(range(4), range(256)):
        addr = bytearray(b"\x01\x02\x03\x04")
        addr[place] = value
        n, text = ip_text(4, bytes(addr))
        assert text == socket.inet_ntop(socket.AF_INET, bytes(addr))
        assert n == len(text)


def test_ipv6_forms() -> None:
    cases = ["::", "::1", "1::", "fe80::1", "1:0:0:2::3", "1::2:0:0:3", "0:1::", "::1:0",
             "::ffff:1.2.3.4", "::ffff:0.0.0.0", "::1.2.3.4", "::0.0.1.0", "::ffff:0:0",
             "1:0:2:0:3:0:4:0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8::ff00:42:8329",
             "0:0:1::", "::2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "64:ff9b::192.0.2.33"]
    for case in cases:
        addr = socket.inet_pton(socket.AF_INET6, case)
        n, text = ip_text(6, addr)
        assert text == socket.inet_ntop(socket.AF_INET6, addr), case
        assert n == len(text)


# Groups drawn mostly from zero, so that runs of every length, place and tie are common.
groups = st.lists(st.sampled_from([0, 0, 0, 1, 0xA, 0xFF, 0x100, 0xFFFF, 0x1234, 0xF00]),
                  min_size=8, max_size=8)


@settings(max_examples=3000, deadline=None)
@given(groups)
def test_ipv6_like_inet_ntop(words: list[int]) -> None:
    addr = b"".join(w.to_bytes(2, "big") for w in words)
    n, text = ip_text(6, addr)
    assert text == socket.inet_ntop(socket.AF_INET6, addr)
    assert n == len(text)


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=16, max_size=16))
def test_any_ipv6_bytes_like_inet_ntop(addr: bytes) -> None:
    assert ip_text(6, addr)[1] == socket.inet_ntop(socket.AF_INET6, addr)


def test_bounds() -> None:
    addr = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert ip_text(6, addr, cap=len("2001:db8::1") + 1) == (11, "2001:db8::1")
    assert ip_text(6, addr, cap=len("2001:db8::1"))[0] == lib.AM_ERR_FULL
    assert ip_text(4, b"\xff" * 4, cap=15)[0] == lib.AM_ERR_FULL
    assert ip_text(4, b"\xff" * 4, cap=16) == (15, "255.255.255.255")
    assert ip_text(5, b"\x00" * 16)[0] == lib.AM_ERR_ARG
    assert lib.am_ip_text(4, ffi.NULL, ffi.new("char[]", 46), 46) == lib.AM_ERR_ARG
    assert lib.am_ip_text(4, b"\x00" * 4, ffi.NULL, 46) == lib.AM_ERR_ARG
