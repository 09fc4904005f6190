"""The nftables ruleset (native/nftables.c): tables, chains, sets and rules dumped over
NETLINK_NETFILTER and decoded in the core into the Firewall collector's `fwchain` and `fwrule`
events (docs/inventory.md), and the ruleset's generation, which says whether it changed.

    with NftReader() as reader:
        generation = reader.generation()   # None: cannot be had (no nf_tables, no privilege)
        result = reader.snapshot(ts)       # NftResult: events, errors, tables, volatile

`decode` makes the same result from netlink messages given as bytes (tests, fuzz seeds).
Both need CAP_NET_ADMIN in the caller's network namespace (nf_tables refuses even dumps
without it: an error of the result, EPERM).
"""

from __future__ import annotations

import os
from typing import Any

import msgpack

from agent._core import ffi, lib
from agent.native._base import CoreStats, NativeHandle, check
from agent.record import field, record


@record(frozen=True)
class NftOptions:
    """See native/core_nftables.h. None keeps the core's default."""

    max_dump_bytes: int | None = None
    max_output_bytes: int | None = None
    max_rule_bytes: int | None = None
    max_set_elements: int | None = None
    timeout_ms: int | None = None


@record
class NftResult:
    """One snapshot of the ruleset. errors: "what: reason" (an unreadable dump or set, a rule
    that did not decode); tables: -1 when the ruleset could not be dumped; volatile: the events
    hold set elements that change without a new generation."""

    events: list[dict[str, Any]]
    errors: list[str] = field(default_factory=list)
    tables: int = -1
    volatile: bool = False


def _error_text(what: str, err: int, reason: str) -> str:
    if err:
        return f"{what}: [Errno {err}] {os.strerror(err)}"
    return f"{what}: {reason}"


class NftReader(NativeHandle):
    """The ruleset of the caller's network namespace, one snapshot per call; no socket is held
    between calls."""

    _what = "nftables reader"

    def __init__(self, options: NftOptions | None = None) -> None:
        self._make(lib.am_nft_new, lib.am_nft_free, options or NftOptions(),
                   "struct am_nft_options", lib.am_nft_default_options)
        self._generation = ffi.new("uint32_t *")
        self._data = ffi.new("const uint8_t **")
        self._len = ffi.new("size_t *")

    def generation(self) -> int | None:
        """The ruleset's generation id, or None when it cannot be had (no nf_tables in the
        kernel, no CAP_NET_ADMIN, an answer that makes no sense): then nothing may be
        assumed."""
        status = lib.am_nft_generation(self._live(), self._generation)
        if status != lib.AM_OK:
            return None
        return int(self._generation[0])

    def snapshot(self, ts: int) -> NftResult:
        """Dumps and decodes the ruleset; every event gets `ts`."""
        check(lib.am_nft_snapshot(self._live(), ts), "am_nft_snapshot")
        return self._result()

    def decode(self, ts: int, messages: bytes) -> NftResult:
        """What a snapshot makes of these netlink messages (dump answers, set elements)."""
        check(lib.am_nft_decode(self._live(), ts, ffi.from_buffer(messages), len(messages)),
              "am_nft_decode")
        return self._result()

    def _result(self) -> NftResult:
        check(lib.am_nft_result(self._live(), self._data, self._len), "am_nft_result")
        doc = msgpack.unpackb(ffi.buffer(self._data[0], self._len[0]), raw=False)
        return NftResult(doc["events"], [_error_text(*error) for error in doc["errors"]],
                         int(doc["tables"]), bool(doc["volatile"]))

    def stats(self) -> CoreStats:
        return self._read_stats("struct am_nft_stats", lib.am_nft_stats)
