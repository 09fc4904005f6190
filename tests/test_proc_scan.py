"""The /proc scanner (agent.native.proc_scan) against this machine's /proc, checked against
psutil and the os module."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from typing import Any

import msgpack
import psutil
import pytest

from agent.native._base import CoreArgumentError, CoreClosedError
from agent.native.proc_scan import ProcScanner, ProcScanOptions
from agent.native.sink import EventSink, SinkOptions, pump

Event = dict[str, Any]


def events_of(batches: Iterable[bytes]) -> list[Event]:
    out: list[Event] = []
    for batch in batches:
        out += msgpack.unpackb(batch, raw=False)
    return out


def snapshot(scanner: ProcScanner | None = None) -> dict[int, Event]:
    sink = EventSink()
    if scanner is None:
        with ProcScanner() as own:
            assert own.scan(sink) is False
        appended = sink.stats().events
    else:
        appended = pump(scanner.scan, sink, lambda batches: None)
    events = events_of(sink.seal())
    assert appended == len(events)
    by_pid = {e["pid"]: e for e in events}
    assert len(by_pid) == len(events), "a pid appeared twice in one snapshot"
    return by_pid


def psutil_cmdline_matches(ours: list[Any] | None, theirs: list[str]) -> bool:
    """psutil splits a cmdline without NULs at spaces (setproctitle); we keep raw argv."""
    ours = ours or []
    if ours == theirs:
        return True
    return len(ours) == 1 and isinstance(ours[0], str) and ours[0].split(" ") == theirs


def test_pid_set_matches_psutil() -> None:
    before = set(psutil.pids())
    ours = snapshot()
    after = set(psutil.pids())
    assert before & after <= set(ours), "processes alive before and after the scan are missing"
    for pid in set(ours) - after:
        assert not os.path.exists(f"/proc/{pid}"), f"{pid} is alive but psutil missed it"
    assert all(e["t"] == "process" and e["src"] == "proc" for e in ours.values())
    assert len({e["ts"] for e in ours.values()}) == 1


@pytest.mark.root
def test_details_match_psutil() -> None:
    ours = snapshot()
    compared = 0
    for pid, event in ours.items():
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                info = proc.as_dict(
                    ["ppid", "uids", "gids", "name", "cmdline", "create_time", "status"]
                )
                try:
                    exe: str | None = proc.exe()
                except psutil.AccessDenied:
                    exe = None
        except psutil.NoSuchProcess:
            continue
        if abs(info["create_time"] * 1000 - event["start"]) > 20:
            continue  # another process under a reused pid
        compared += 1
        assert event["ppid"] == info["ppid"], pid
        assert (event["uid"], event["euid"]) == tuple(info["uids"])[:2], pid
        assert (event["gid"], event["egid"]) == tuple(info["gids"])[:2], pid
        if not event.get("kthread"):  # kernel workers rename themselves as they work
            assert event["comm"] == info["name"] or info["name"].startswith(event["comm"]), pid
        if exe is None:
            assert "exe" not in event and event.get("denied") is True, pid
        elif exe:
            assert event["exe"].removesuffix(" (deleted)") == exe, pid
        if event.get("kthread"):
            assert "argv" not in event and info["cmdline"] == []
        elif info["cmdline"] is not None:
            assert psutil_cmdline_matches(event.get("argv"), info["cmdline"]), pid
        assert event["state"] in "RSDZTtWXxKPI", pid
        assert event["threads"] >= 1
    assert compared >= len(ours) // 2


def test_own_child_exactly() -> None:
    marker = f"scan-{uuid.uuid4().hex}"
    args = ["/bin/sh", "-c", "sleep 30; :", marker, "with space", "é"]
    # A plain shell: under tests/test_sanitizers.py the preloaded ASan runtime would start
    # with it too and move its rss between the two reads.
    child = subprocess.Popen(args, env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    try:
        deadline = time.monotonic() + 5
        while psutil.Process(child.pid).cmdline() != args:  # until it has exec'd
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ours = snapshot()
        event = ours[child.pid]
        proc = psutil.Process(child.pid)
        assert event["argv"] == args
        assert event["exe"] == os.path.realpath("/bin/sh")
        assert event["ppid"] == os.getpid()
        assert (event["uid"], event["gid"]) == (os.getuid(), os.getgid())
        assert event["comm"] == "sh"
        assert event["state"] in "RSD"  # a vfork parent waits in D
        assert event["threads"] == 1
        # The shell may still be faulting pages in between the two reads.
        assert abs(event["rss"] - proc.memory_info().rss) < 1 << 20
        assert abs(event["start"] / 1000 - proc.create_time()) < 0.02
        assert abs(event["ts"] / 1000 - time.time()) < 5
        for flag in ("kthread", "partial", "denied", "trunc"):
            assert flag not in event
    finally:
        child.kill()
        child.wait()


def _status_ids(pid: int) -> tuple[list[int], list[int]]:
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return [int(v) for v in fields["Uid"].split()], [int(v) for v in fields["Gid"].split()]


@pytest.mark.root
def test_ids_equal_the_status_files() -> None:
    """The ids come from the pid's pidfd where the kernel has PIDFD_GET_INFO, else from the
    status file: either way they are the file's, also for a process whose real, effective and
    saved ids all differ (root may set them so)."""
    if os.geteuid() != 0:
        pytest.skip("setting another process's ids needs root")
    code = "import os,time;os.setresgid(1001,1002,1003);os.setresuid(1004,1005,1006);time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 5
        while _status_ids(child.pid)[0][0] != 1004:
            assert time.monotonic() < deadline, "the child did not change its ids"
            time.sleep(0.01)
        ours = snapshot()
        event = ours[child.pid]
        assert (event["uid"], event["euid"], event["gid"], event["egid"]) == (1004, 1005, 1001, 1002)
        compared = 0
        for pid, event in ours.items():
            try:
                uids, gids = _status_ids(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
            compared += 1
            assert (event["uid"], event["euid"]) == tuple(uids[:2]), pid
            assert (event["gid"], event["egid"]) == tuple(gids[:2]), pid
        assert compared >= len(ours) // 2
    finally:
        child.kill()
        child.wait()


def test_zombie_is_neither_partial_nor_vanished() -> None:
    child = subprocess.Popen(["/bin/true"])
    deadline = time.monotonic() + 5
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        event = snapshot()[child.pid]
        assert event["state"] == "Z"
        assert "argv" not in event and "exe" not in event
        assert "partial" not in event and "gone" not in event
    finally:
        child.wait()


def test_kernel_threads_flagged() -> None:
    ours = snapshot()
    kthreadd = ours[2]
    assert kthreadd["kthread"] is True and kthreadd["ppid"] == 0 and "argv" not in kthreadd
    kids = [e for e in ours.values() if e["ppid"] == 2]
    assert kids and all(e.get("kthread") for e in kids)
    assert "kthread" not in ours[os.getpid()]


def test_argv_bounds() -> None:
    args = ["/bin/sleep", "30"] + [str(i) for i in range(40)]
    child = subprocess.Popen(args)
    try:
        time.sleep(0.1)
        with ProcScanner(ProcScanOptions(max_args=3)) as scanner:
            event = snapshot(scanner)[child.pid]
            assert event["argv"] == args[:3] and event["trunc"] is True
            assert scanner.stats().argv_truncated >= 1
        with ProcScanner(ProcScanOptions(max_argv_bytes=64)) as scanner:
            event = snapshot(scanner)[child.pid]
            assert event["trunc"] is True
            joined = "\0".join(event["argv"]).encode()
            assert b"\0".join(a.encode() for a in args).startswith(joined)
            assert len(joined) <= 64
    finally:
        child.kill()
        child.wait()


def test_small_sink_resumes_the_walk() -> None:
    sink = EventSink(SinkOptions(batch_bytes=1024, max_batches=1))
    handed: list[bytes] = []
    with ProcScanner() as scanner:
        before = set(psutil.pids())
        total = pump(scanner.scan, sink, handed.extend)
        after = set(psutil.pids())
        handed += sink.seal()
        events = events_of(handed)
        assert total == len(events) > 20
        pids = [e["pid"] for e in events]
        assert len(pids) == len(set(pids))
        assert before & after <= set(pids)
        assert scanner.stats().dropped == 0 and sink.stats().dropped_full == 0
        # Events larger than a 1 KiB batch (long command lines) come without argv and exe.
        lean = [e for e in events if e.get("trunc") and "argv" not in e and not e.get("kthread")]
        assert len(lean) == scanner.stats().oversize
        # A full sink stops the walk (more); the next call goes on where it stopped.
        small = EventSink(SinkOptions(batch_bytes=1024, max_batches=1))
        assert scanner.scan(small) is True
        rest = EventSink()
        assert scanner.scan(rest) is False
        resumed = [e["pid"] for e in events_of(small.seal() + rest.seal())]
        still = set(psutil.pids())  # a process of the first walk may have ended since
        assert len(resumed) == len(set(resumed))
        assert before & after & still <= set(resumed)


def test_bad_options_and_closed() -> None:
    for bad in (ProcScanOptions(max_args=0), ProcScanOptions(max_argv_bytes=1)):
        with pytest.raises(CoreArgumentError):
            ProcScanner(bad)
    scanner = ProcScanner()
    scanner.close()
    scanner.close()
    with pytest.raises(CoreClosedError):
        scanner.stats()
    with pytest.raises(CoreClosedError):
        scanner.scan(EventSink())


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_leaks() -> None:
    from leakcheck import assert_rss_flat

    scanner = ProcScanner()
    sink = EventSink()

    def scan_once() -> None:
        scanner.scan(sink)
        sink.seal()

    assert_rss_flat(scan_once, name="am_pscan_run")
    assert_rss_flat(scanner.stats, name="am_pscan_stats")
    assert_rss_flat(lambda: ProcScanner().close(), name="am_pscan_new/free")
    scanner.close()
