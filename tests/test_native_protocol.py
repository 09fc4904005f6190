"""The one protocol of the native wrappers (agent/native/_base.py): every C stats struct is
surfaced field for field by its Python type, option values are range-checked against their C
field's type, and every wrapper raises CoreClosedError from every call after close()."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent import native
from agent._core import ffi
from agent.native import _base
from agent.native._base import CoreArgumentError, CoreClosedError, CoreStats, NativeHandle
from agent.native.aggregate import Aggregator
from agent.native.audit_netlink import AuditNetlinkStats, NetlinkDecoder
from agent.native.dns import DnsCapture, DnsOptions
from agent.native.index_probe import IndexProbe
from agent.native.inotify import Inotify, InotifyOptions
from agent.native.nftables import NftReader
from agent.native.peripheral import PeripheralOptions, PeripheralSource
from agent.native.proc_connector import (
    ProcConnector,
    ProcConnectorOptions,
)
from agent.native.proc_scan import ProcScanner, ProcScanOptions
from agent.native.sink import EventSink, SinkOptions
from agent.native.sock_diag import SocketTable, SocketTableOptions
from agent.native.utmp import UtmpDecoder, UtmpReader
from agent.record import record

NATIVE = Path(__file__).resolve().parents[1] / "native"



def c_stats_structs() -> set[str]:
    """Every `struct am_*_stats` the C API headers declare."""
    found: set[str] = set()
    for header in [NATIVE / "core.h", *sorted(NATIVE.glob("core_*.h"))]:
        found |= set(re.findall(r"^struct (am_\w+_stats) \{", header.read_text(), re.MULTILINE))
    return {f"struct {name}" for name in found}


def _all_stats(tmp_path: Path) -> list[CoreStats]:
    """stats() of every wrapper that runs without privileges (the audit source's live ones
    are in test_live_audit), and what they hold."""
    out: list[CoreStats] = []
    for wrapper, _ in _closable(tmp_path):
        with wrapper:
            if not hasattr(wrapper, "stats"):
                continue  # MsgpackWriter: no counters
            stats = wrapper.stats()
            out.append(stats)
            if isinstance(stats, AuditNetlinkStats):
                out.append(stats.parser)
    return out


def test_every_c_stats_struct_is_surfaced_field_for_field(tmp_path: Path) -> None:
    """Each wrapper's stats() holds every field of its C struct, by its C name, and every
    stats struct of the C API is surfaced by some wrapper: a field or a struct added in C
    shows up (the fields come from ffi.typeof, not from a list kept by hand)."""
    surfaced: set[str] = set()
    for stats in _all_stats(tmp_path):
        c_fields = [name for name, _ in ffi.typeof(stats.struct).fields]
        assert list(stats) == c_fields, stats.struct
        assert all(getattr(stats, name) == stats[name] for name in c_fields)
        surfaced.add(stats.struct)
    structs = c_stats_structs()
    assert len(structs) >= 9
    assert structs <= surfaced, structs - surfaced


def test_stats_copy_every_field() -> None:
    raw = ffi.new("struct am_sink_stats *")
    names = [name for name, _ in ffi.typeof("struct am_sink_stats").fields]
    for k, name in enumerate(names):
        setattr(raw, name, 1000 + k)
    stats = CoreStats.read("struct am_sink_stats", raw)
    assert [getattr(stats, name) for name in names] == [1000 + k for k in range(len(names))]
    assert dict(stats) == {name: 1000 + k for k, name in enumerate(names)}
    with pytest.raises(AttributeError, match="no counter"):
        _ = stats.no_such_counter
    # Values that lack a C field are refused.
    with pytest.raises(TypeError, match="lack"):
        CoreStats("struct am_sink_stats", {names[0]: 1})


def test_option_ranges_come_from_the_c_types() -> None:
    # uint32_t fields: 0..2**32-1, whatever the option.
    with pytest.raises(CoreArgumentError, match="max_batches"):
        EventSink(SinkOptions(max_batches=1 << 32))
    with pytest.raises(CoreArgumentError, match="max_args"):
        ProcScanner(ProcScanOptions(max_args=-1))
    with pytest.raises(CoreArgumentError, match="rcvbuf"):
        ProcConnector(ProcConnectorOptions(listen=False, rcvbuf=1 << 40))
    # In range for the type, but refused by the core's own checks: still CoreArgumentError.
    with pytest.raises(CoreArgumentError):
        EventSink(SinkOptions(max_batches=0))
    # The options that are not C fields are marked, and a stray name is a programming error.
    opts = _base.c_options(SocketTableOptions(source="procnet", max_sockets=7),
                           "struct am_sock_options", _base.lib.am_sock_default_options)
    assert opts.max_sockets == 7

    @record(frozen=True)
    class Stray:
        no_such_field: int = 1

    with pytest.raises(TypeError, match="no_such_field"):
        _base.c_options(Stray(), "struct am_sink_options", _base.lib.am_sink_default_options)


def _closable(tmp_path: Path) -> list[tuple[NativeHandle, list[Callable[[NativeHandle], Any]]]]:
    """Every wrapper the agent uses without privileges, with every call of its own."""
    sink = EventSink()
    wtmp = tmp_path / "wtmp"
    wtmp.write_bytes(b"")
    return [
        (EventSink(), [lambda h: h.take(), lambda h: h.seal(), lambda h: h.full(), lambda h: h.events(),
                       lambda h: h.stats(), lambda h: h.handle]),
        (native.MsgpackWriter(64), [lambda h: h.write_nil(), lambda h: h.write_int(1),
                                    lambda h: h.write_str("x"), lambda h: h.getvalue(),
                                    lambda h: h.reset()]),
        (native.AuditParser(), [lambda h: h.feed(b"x\n"), lambda h: h.feed_record(1300, b"x"),
                                lambda h: h.expire(0), lambda h: h.seal(),
                                lambda h: h.flush(), lambda h: h.stats(), lambda h: h.handle]),
        (NetlinkDecoder(), [lambda h: h.feed(b""), lambda h: h.flush(), lambda h: h.stats()]),
        (Aggregator("process"), [lambda h: h.add(b"\x90", sink), lambda h: h.flush(sink),
                                 lambda h: h.filter_local_addresses(None),
                                 lambda h: h.use_hosts(None), lambda h: h.stats()]),
        (DnsCapture(DnsOptions(listen=False)),
         [lambda h: h.fileno(), lambda h: h.drain(sink), lambda h: h.feed_packet(sink, b""),
          lambda h: h.feed_message(sink, b""), lambda h: h.host("192.0.2.1"),
          lambda h: h.filter_program(), lambda h: h.link(Aggregator("network")),
          lambda h: h.stats()]),
        (ProcScanner(), [lambda h: h.scan(sink), lambda h: h.stats()]),
        (ProcConnector(ProcConnectorOptions(listen=False)),
         [lambda h: h.fileno(), lambda h: h.drain(sink), lambda h: h.decode(sink, b""),
          lambda h: h.stats()]),
        (PeripheralSource(PeripheralOptions(listen=False)),
         [lambda h: h.filenos(), lambda h: h.drain(sink), lambda h: h.decode(sink, b""),
          lambda h: h.stats()]),
        (SocketTable(SocketTableOptions(source="procnet")),
         [lambda h: h.fileno(), lambda h: h.snapshot(), lambda h: h.listening(sink),
          lambda h: h.changes(sink), lambda h: h.begin(),
          lambda h: h.feed_procnet(6, 2, b""), lambda h: h.feed_diag(6, b""),
          lambda h: h.commit(0), lambda h: h.stats()]),
        (UtmpReader(str(wtmp)), [lambda h: h.read(sink), lambda h: h.snapshot(sink),
                                 lambda h: h.state(), lambda h: h.restore(h_state),
                                 lambda h: h.stats()]),
        (UtmpDecoder(), [lambda h: h.feed(sink, b""), lambda h: h.stats()]),
        (Inotify(InotifyOptions(listen=False)),
         [lambda h: h.fileno(), lambda h: h.set_paths([]), lambda h: h.drain(sink),
          lambda h: h.release(sink), lambda h: h.decode(sink, b""), lambda h: h.audit(b"\x90"),
          lambda h: h.test_watch(1, "/w"), lambda h: h.stats()]),
        (NftReader(), [lambda h: h.decode(1, b""), lambda h: h.generation(),
                       lambda h: h.stats()]),
        (IndexProbe(4), [lambda h: h.put(b"k", 1), lambda h: h.get(b"k"),
                         lambda h: h.delete(b"k"), lambda h: h.prune(1), lambda h: h.check(),
                         lambda h: h.stats(), lambda h: h.seed()]),
    ]


h_state = {"dev": 0, "ino": 0, "offset": 0, "size": 0, "layout": 0}


def test_every_wrapper_raises_the_one_closed_error(tmp_path: Path) -> None:
    wrappers = _closable(tmp_path)
    # Every NativeHandle subclass of agent.native is here (AuditNetlink: test_live_audit).
    covered = {type(w).__name__ for w, _ in wrappers} | {"AuditNetlink"}
    subclasses: set[str] = set()
    todo = list(NativeHandle.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if not cls.__name__.startswith("_"):
            subclasses.add(cls.__name__)
    assert subclasses <= covered, subclasses - covered
    for wrapper, calls in wrappers:
        assert not wrapper.closed
        with wrapper:
            pass
        assert wrapper.closed
        wrapper.close()  # idempotent
        for call in calls:
            with pytest.raises(CoreClosedError):
                call(wrapper)


def test_a_sink_given_to_a_source_after_its_close_is_refused() -> None:
    sink = EventSink()
    sink.close()
    with ProcScanner() as scanner, pytest.raises(CoreClosedError):
        scanner.scan(sink)
