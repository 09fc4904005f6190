"""The inotify source (agent.native.inotify) against records built here with struct.pack (the
kernel's struct inotify_event) and against the live kernel's inotify on a temporary tree; the
FileSystem aggregation key. The agent-level tests (twin paths, audit actors, live patches)
are in tests/test_file_system_agent.py."""

from __future__ import annotations

import os
import struct
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest

from agent.native._base import CoreArgumentError
from agent.native.aggregate import Aggregator
from agent.native.inotify import Inotify, InotifyOptions
from agent.native.sink import EventSink, pump

Event = dict[str, Any]

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_OPEN = 0x2, 0x4, 0x8, 0x20
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x400, 0x4000, 0x8000, 0x40000000


def record(wd: int, mask: int, name: bytes = b"", cookie: int = 0, pad: int = 16) -> bytes:
    """One struct inotify_event as read(2) returns it: the name NUL-padded to a multiple of
    `pad` bytes (the kernel pads to the record alignment)."""
    padded = name + b"\0" * (-(len(name) + 1) % pad + 1) if name else b""
    return struct.pack("=iIII", wd, mask, cookie, len(padded)) + padded


def events_of(batches: Iterable[bytes]) -> list[Event]:
    out: list[Event] = []
    for batch in batches:
        out += msgpack.unpackb(batch, raw=False)
    return out


def decode(source: Inotify, data: bytes) -> list[Event]:
    sink = EventSink()
    got: list[bytes] = []
    source.decode(sink, data)
    got += sink.seal()
    return events_of(got)


@pytest.fixture
def decoder() -> Iterator[Inotify]:
    with Inotify(InotifyOptions(listen=False)) as source:
        source.test_watch(1, "/watched")
        source.test_watch(2, "/watched/sub")
        source.test_watch(3, "/parent-only", report=False)
        yield source


# ---------------------------------------------------------------------------------------------
# decoding records


def test_each_operation_is_named_as_defender_names_it(decoder: Inotify) -> None:
    data = b"".join([
        record(1, IN_CREATE, b"f"), record(1, IN_MODIFY, b"f"), record(1, IN_ATTRIB, b"f"),
        record(1, IN_CLOSE_WRITE, b"f"), record(1, IN_OPEN, b"f"), record(1, IN_DELETE, b"f"),
    ])
    events = decode(decoder, data)
    assert [e["op"] for e in events] == ["create", "modify", "attrib", "close_write", "open",
                                         "delete"]
    assert {e["path"] for e in events} == {"/watched/f"}
    assert all(e["t"] == "fs" and e["src"] == "inotify" and e["actor"] == "unavailable"
               for e in events)
    stats = decoder.stats()
    assert (stats.create, stats.modify, stats.attrib, stats.close_write, stats.open,
            stats.delete, stats.records, stats.events) == (1, 1, 1, 1, 1, 1, 6, 6)


def test_a_rename_is_one_move_paired_by_cookie_and_lone_halves_say_in_or_out(
        decoder: Inotify) -> None:
    data = b"".join([
        record(1, IN_MOVED_FROM, b"old", cookie=7), record(2, IN_MOVED_TO, b"new", cookie=7),
        record(1, IN_MOVED_FROM, b"gone", cookie=8), record(1, IN_CREATE, b"x"),
        record(2, IN_MOVED_TO, b"came", cookie=9),
    ])
    events = decode(decoder, data)
    assert events[0] == {**events[0], "op": "move", "path": "/watched/sub/new",
                         "from": "/watched/old"}
    assert "moved" not in events[0]
    assert events[1]["op"] == "move" and events[1]["path"] == "/watched/gone"
    assert events[1]["moved"] == "out"
    assert events[2]["op"] == "create"
    assert events[3] == {**events[3], "op": "move", "path": "/watched/sub/came", "moved": "in"}
    stats = decoder.stats()
    assert (stats.moves_paired, stats.moves_out, stats.moves_in) == (1, 1, 1)


def test_overflow_is_an_event_and_a_counter(decoder: Inotify) -> None:
    events = decode(decoder, record(-1, IN_Q_OVERFLOW))
    assert [(e["op"], e["actor"]) for e in events] == [("overflow", "unavailable")]
    assert decoder.stats().overflows == 1


def test_directories_parent_only_watches_and_unknown_watches(decoder: Inotify) -> None:
    data = b"".join([record(1, IN_DELETE | IN_ISDIR, b"d"), record(3, IN_CREATE, b"x"),
                     record(42, IN_CREATE, b"y"), record(2, IN_IGNORED)])
    events = decode(decoder, data)
    assert [(e["op"], e["path"], e.get("isdir")) for e in events] == [
        ("delete", "/watched/d", True)]
    stats = decoder.stats()
    assert (stats.outside, stats.unknown_wd) == (1, 1)
    assert stats.watches == 2  # IN_IGNORED removed wd 2
    assert decode(decoder, record(2, IN_CREATE, b"z")) == []


def test_impossible_lengths_and_names_with_a_slash_are_counted_never_read_past(
        decoder: Inotify) -> None:
    short = record(1, IN_CREATE, b"abc")[:-4]  # len says more than the buffer holds
    assert decode(decoder, short) == []
    assert decode(decoder, b"\x01\x00") == []
    events = decode(decoder, record(1, IN_CREATE, b"a/b") + record(1, IN_CREATE, b"ok"))
    assert ops(events) == [("create", "/watched/ok")]
    assert decoder.stats().malformed == 3


def test_paths_beyond_path_max_are_skipped_and_counted() -> None:
    with Inotify(InotifyOptions(listen=False)) as source:
        source.test_watch(1, "/" + "d" * 4000)
        assert decode(source, record(1, IN_CREATE, b"n" * 200)) == []
        assert source.stats().long_paths == 1


def test_a_full_pending_ring_writes_its_oldest_first_and_counts() -> None:
    with Inotify(InotifyOptions(listen=False, max_pending=16, join_ms=60000)) as source:
        source.test_watch(1, "/w")
        data = b"".join(record(1, IN_CREATE, f"f{i}".encode()) for i in range(40))
        events = decode(source, data)
        assert [e["path"] for e in events] == [f"/w/f{i}" for i in range(24)]
        assert all(e["actor"] == "unmatched" for e in events)
        assert source.stats().pending_full == 24
        sink = EventSink()
        source.release(sink, force=True)
        assert [e["path"] for e in events_of(sink.seal())] == [f"/w/f{i}" for i in range(24, 40)]


def test_bad_options_and_paths_are_refused() -> None:
    for bad in (InotifyOptions(listen=False, max_pending=1),
                InotifyOptions(listen=False, max_watches=0),
                InotifyOptions(listen=False, recursive=2)):  # type: ignore[arg-type]
        with pytest.raises(CoreArgumentError):
            Inotify(bad)
    with Inotify(InotifyOptions(listen=False)) as source:
        for paths in (["relative"], ["/a,b"]):
            with pytest.raises(CoreArgumentError):
                source.set_paths(paths)


# ---------------------------------------------------------------------------------------------
# the audit join


def audit_batch(*events: Event) -> bytes:
    return msgpack.packb(list(events), use_bin_type=True)


def test_events_carry_the_actor_the_audit_records_of_their_path_name() -> None:
    with Inotify(InotifyOptions(listen=False, join_ms=60000)) as source:
        source.test_watch(1, "/w")
        now = int(time.time() * 1000)
        source.audit(audit_batch(
            {"t": "audit", "ts": now, "pid": 4242, "uid": 1000, "auid": 1000,
             "exe": "/usr/bin/touch", "comm": "touch", "cwd": "/w",
             "paths": [{"n": "/w", "nt": "PARENT"}, {"n": "f", "nt": "CREATE"}]},
            {"t": "exec", "ts": now, "pid": 1},  # no paths: nothing learned
        ))
        assert source.stats().actors_learned == 1
        sink = EventSink()
        source.decode(sink, record(1, IN_CREATE, b"f") + record(1, IN_CREATE, b"other"))
        assert events_of(sink.seal()) == []  # each waits join_ms for its records
        source.release(sink, force=True)
        matched, waited = events_of(sink.seal())
        assert matched == {**matched, "path": "/w/f", "actor": "audit", "pid": 4242,
                           "uid": 1000, "auid": 1000, "exe": "/usr/bin/touch", "comm": "touch"}
        assert waited["path"] == "/w/other" and waited["actor"] == "unmatched"
        stats = source.stats()
        assert (stats.actors_matched, stats.actors_unmatched) == (1, 1)


def test_the_actor_is_the_process_that_did_what_the_event_says_before_it() -> None:
    with Inotify(InotifyOptions(listen=False, join_ms=60000)) as source:
        source.test_watch(1, "/w")
        now = int(time.time() * 1000)

        def did(pid: int, nt: str, ts: int) -> Event:
            return {"t": "audit", "ts": ts, "pid": pid, "exe": f"/bin/p{pid}",
                    "paths": [{"n": "/w/f", "nt": nt}]}

        source.audit(audit_batch(did(1, "CREATE", now - 200), did(2, "NORMAL", now - 100),
                                 did(3, "DELETE", now - 50), did(4, "NORMAL", now + 5000)))
        sink = EventSink()
        source.decode(sink, b"".join(record(1, mask, b"f") for mask in (
            IN_CREATE, IN_MODIFY, IN_ATTRIB, IN_DELETE)))
        source.release(sink, force=True)
        got = [(e["op"], e["pid"]) for e in events_of(sink.seal())]
        # pid 4's write came after these events were read: not theirs.
        assert got == [("create", 1), ("modify", 2), ("attrib", 2), ("delete", 3)]


def test_audit_events_give_their_actor_through_their_path_records() -> None:
    """The parser writes a watch rule's syscall as an `audit` event whose PATH records are
    in `recs` (docs/events.md): the form the live audit source gives."""
    with Inotify(InotifyOptions(listen=False, join_ms=60000)) as source:
        source.test_watch(1, "/w")
        now = int(time.time() * 1000)
        source.audit(audit_batch({
            "t": "audit", "ts": now, "sn": 9, "rt": "SYSCALL", "pid": 77, "uid": 0, "auid": None,
            "exe": "/usr/bin/rm", "cwd": "/",
            "recs": [{"type": "SYSCALL", "f": {"syscall": "263"}},
                     {"type": "CWD", "f": {"cwd": "/"}},
                     {"type": "PATH", "f": {"item": "0", "name": "/w", "nametype": "PARENT"}},
                     {"type": "PATH", "f": {"item": "1", "name": "/w/x", "nametype": "DELETE"}}],
        }))
        sink = EventSink()
        source.decode(sink, record(1, IN_DELETE, b"x"))
        source.release(sink, force=True)
        (event,) = events_of(sink.seal())
        assert (event["actor"], event["pid"], event["exe"], event["uid"]) == (
            "audit", 77, "/usr/bin/rm", 0)
        assert "auid" not in event  # unset in the record


def test_the_actor_table_is_bounded_and_malformed_audit_batches_are_skipped() -> None:
    with Inotify(InotifyOptions(listen=False, join_ms=100, max_actors=4)) as source:
        now = int(time.time() * 1000)
        source.audit(audit_batch(*({"t": "audit", "ts": now, "pid": i,
                                    "paths": [{"n": f"/p{i}", "nt": "NORMAL"}]}
                                   for i in range(10))))
        stats = source.stats()
        assert (stats.actors_learned, stats.actors_full) == (4, 6)
        source.audit(b"\x93\x01")  # an array that ends early
        source.audit(b"not msgpack")


# ---------------------------------------------------------------------------------------------
# aggregation


def test_file_system_aggregation_merges_path_and_operation() -> None:
    events = [{"t": "fs", "src": "inotify", "ts": 10 + i, "op": "modify", "path": "/w/a",
               "actor": "unavailable"} for i in range(5)]
    events += [{"t": "fs", "src": "inotify", "ts": 20, "op": "attrib", "path": "/w/a",
                "actor": "unavailable"},
               {"t": "fs", "src": "inotify", "ts": 21, "op": "modify", "path": "/w/b",
                "actor": "unavailable"}]
    with Aggregator("file_system", accept=("fs",)) as agg:
        sink = EventSink()
        agg.add(msgpack.packb(events), sink)
        agg.flush(sink)
        out = events_of(sink.seal())
    assert [(e["op"], e["path"], e["hits"], e["first"], e["last"]) for e in out] == [
        ("modify", "/w/a", 5, 10, 14), ("attrib", "/w/a", 1, 20, 20), ("modify", "/w/b", 1, 21, 21)]


# ---------------------------------------------------------------------------------------------
# the live kernel


@contextmanager
def watching(paths: list[str], **options: Any) -> Iterator[tuple[Inotify, Callable[[], list[Event]]]]:
    with Inotify(InotifyOptions(**options)) as source:
        source.set_paths(paths)
        sink = EventSink()

        def read() -> list[Event]:
            got: list[bytes] = []
            time.sleep(0.05)
            pump(source.drain, sink, got.extend)
            pump(lambda s: source.release(s, True), sink, got.extend, seal=True)
            return events_of(got)

        yield source, read


def ops(events: list[Event]) -> list[tuple[str, str]]:
    return [(e["op"], e["path"]) for e in events]


def test_create_modify_rename_chmod_delete_each_give_their_event(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with watching([str(root)]) as (_, read):
        f = root / "a"
        f.write_bytes(b"x")
        f.write_bytes(b"y")  # truncate + write
        os.chmod(f, 0o600)
        os.rename(f, root / "b")
        os.unlink(root / "b")
        events = read()
    a, b = str(root / "a"), str(root / "b")
    # The kernel merges a record identical to the one queued last: compare without repeats.
    distinct = [op for i, op in enumerate(ops(events)) if i == 0 or op != ops(events)[i - 1]]
    assert distinct == [("create", a), ("modify", a), ("close_write", a), ("modify", a),
                        ("close_write", a), ("attrib", a), ("move", b), ("delete", b)]
    (move,) = [e for e in events if e["op"] == "move"]
    assert move["from"] == a


def test_directories_made_later_are_watched_and_what_they_hold_is_found(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with watching([str(root)]) as (source, read):
        # The race the scan covers: c and f exist before the agent has watched a or b.
        subprocess.run(["sh", "-c", f"mkdir -p {root}/a/b/c && touch {root}/a/b/c/f"], check=True)
        events = read()
        created = {e["path"] for e in events if e["op"] == "create"}
        assert {f"{root}/a", f"{root}/a/b", f"{root}/a/b/c", f"{root}/a/b/c/f"} <= created
        assert source.stats().watches == 4
        # ... and now c itself is watched.
        (root / "a/b/c/g").write_bytes(b"")
        assert ("create", f"{root}/a/b/c/g") in ops(read())
        # A directory moved within the tree keeps its watches under its new name.
        os.rename(root / "a", root / "z")
        (root / "z/b/c/h").write_bytes(b"")
        assert ("create", f"{root}/z/b/c/h") in ops(read())
        subprocess.run(["rm", "-r", str(root / "z")], check=True)
        read()
        assert source.stats().watches == 1


def test_not_recursive_watches_the_root_alone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    with watching([str(root)], recursive=False) as (source, read):
        (root / "sub/f").write_bytes(b"")
        (root / "g").write_bytes(b"")
        assert {p for _, p in ops(read())} == {str(root / "g")}
        assert source.stats().watches == 1


def test_a_path_not_yet_there_is_watched_from_its_parent_and_picked_up(tmp_path: Path) -> None:
    later = tmp_path / "not" / "yet"
    with watching([str(later)]) as (source, read):
        assert source.stats().roots_pending == 1
        (tmp_path / "elsewhere").write_bytes(b"")  # under the parent, not under the path
        subprocess.run(["sh", "-c", f"mkdir -p {later}/d && touch {later}/d/f"], check=True)
        events = read()
        assert {f"{later}", f"{later}/d", f"{later}/d/f"} <= {p for op, p in ops(events)
                                                           if op == "create"}
        assert all(p.startswith(str(later)) for _, p in ops(events))
        stats = source.stats()
        assert stats.roots_pending == 0 and stats.watches == 2  # later, d; no parent left
        (later / "d/f").write_bytes(b"1")
        assert ("modify", f"{later}/d/f") in ops(read())


def test_a_single_file_can_be_a_path(tmp_path: Path) -> None:
    f = tmp_path / "config"
    f.write_bytes(b"a")
    with watching([str(f)]) as (_, read):
        f.write_bytes(b"b")
        os.chmod(f, 0o640)
        assert {op for op, p in ops(read()) if p == str(f)} >= {"modify", "attrib", "close_write"}


def test_patching_paths_changes_exactly_the_watches_concerned(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        (d / "sub").mkdir(parents=True)
    with watching([str(a), str(b)]) as (source, read):
        before = source.stats()
        assert (before.watches, before.watches_added) == (4, 4)
        source.set_paths([str(b), str(c)])
        after = source.stats()
        assert after.watches == 4
        assert after.watches_added - before.watches_added == 2  # c, c/sub
        assert after.watches_removed - before.watches_removed == 2  # a, a/sub
        (a / "x").write_bytes(b"")
        (b / "sub/y").write_bytes(b"")
        (c / "z").write_bytes(b"")
        assert {p for _, p in ops(read())} == {str(b / "sub/y"), str(c / "z")}


# ---------------------------------------------------------------------------------------------
# the kernel's limits: counted and reported, never silent (sysctls shared by the machine:
# lowered for a moment, restored at once)


@contextmanager
def sysctl(name: str, value: int) -> Iterator[None]:
    path = Path("/proc/sys/fs/inotify") / name
    old = path.read_text()
    path.write_text(str(value))
    try:
        yield
    finally:
        path.write_text(old)


@pytest.mark.live
@pytest.mark.root
def test_a_queue_overflow_is_an_event_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    # The kernel reads max_queued_events when the descriptor is made.
    with sysctl("max_queued_events", 16):
        source = Inotify()
    with source:
        source.set_paths([str(root)])
        for i in range(100):
            (root / f"f{i}").write_bytes(b"")
        sink = EventSink()
        got: list[bytes] = []
        pump(source.drain, sink, got.extend, seal=True)
        events = events_of(got)
        assert source.stats().overflows == 1
        assert events[-1]["op"] == "overflow"
        assert len(events) == 17  # 16 queued, then the overflow record


def root_watches() -> int:
    """The inotify watches root's programs hold now (the kernel counts max_user_watches per
    user): one `inotify wd:` line per watch in /proc/PID/fdinfo."""
    count = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if proc.stat().st_uid != 0:
                continue
            for info in (proc / "fdinfo").iterdir():
                count += info.read_text().count("inotify wd:")
        except OSError:
            continue
    return count


@pytest.mark.live
@pytest.mark.root
def test_the_watch_limit_is_counted_and_reported(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for i in range(20):
        (root / f"d{i}").mkdir(parents=True)
    with Inotify() as source:
        with sysctl("max_user_watches", root_watches() + 8):
            source.set_paths([str(root)])
        stats = source.stats()
    # 21 directories: each one watched or counted (another root program may have taken or
    # given back a watch meanwhile: the split may move, the sum may not).
    assert stats.watch_limit >= 1
    assert stats.watches + stats.watch_limit == 21


# ---------------------------------------------------------------------------------------------
# memory


def test_entry_points_keep_memory_flat(tmp_path: Path) -> None:
    from leakcheck import assert_rss_flat

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    later = tmp_path / "later"
    sink = EventSink()
    now = int(time.time() * 1000)
    batch = audit_batch({"t": "audit", "ts": now, "pid": 1, "exe": "/bin/x", "cwd": str(root),
                         "paths": [{"n": "f", "nt": "CREATE"}]})
    records = b"".join([record(1, IN_CREATE | IN_ISDIR, b"d"), record(1, IN_MOVED_FROM, b"a", 3),
                        record(1, IN_MOVED_TO, b"b", 3), record(1, IN_MOVED_FROM, b"c", 4),
                        record(-1, IN_Q_OVERFLOW), record(1, IN_IGNORED)])

    def open_watch_close() -> None:
        with Inotify(InotifyOptions(join_ms=1)) as source:
            source.set_paths([str(root), str(later)])
            source.audit(batch)

    live = Inotify(InotifyOptions(join_ms=1))
    live.set_paths([str(root)])

    def change_and_drain() -> None:
        (root / "sub" / "f").write_bytes(b"")
        os.rename(root / "sub" / "f", root / "g")
        os.unlink(root / "g")
        live.audit(batch)
        pump(live.drain, sink, lambda _: None)
        pump(lambda s: live.release(s, True), sink, lambda _: None, seal=True)

    def patch_paths() -> None:
        live.set_paths([str(root), str(later)])
        live.set_paths([str(root)])

    def decode_records() -> None:
        with Inotify(InotifyOptions(listen=False, join_ms=1)) as source:
            source.test_watch(1, "/w")
            source.audit(batch)
            source.decode(sink, records)
            source.release(sink, force=True)
            sink.seal()
            sink.take()
            source.stats()

    # Closing an inotify descriptor waits for an SRCU grace period (about 6 ms): fewer calls,
    # a tighter bound (a leak of 32 bytes a call still fails it).
    assert_rss_flat(open_watch_close, calls=500, tolerance=16 * 1024, name="open_watch_close")
    for fn in (change_and_drain, patch_paths, decode_records):
        assert_rss_flat(fn, calls=2_000, name=fn.__name__)
    live.close()
