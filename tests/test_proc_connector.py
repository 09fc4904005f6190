"""The proc connector (agent.native.proc_connector) against the live kernel's cn_proc and
against synthetic datagrams built here with struct.pack (the kernel's wire layout)."""

from __future__ import annotations

import os
import selectors
import signal
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest

from agent.native._base import CoreArgumentError, CoreClosedError
from agent.native.proc_connector import ProcConnector, ProcConnectorOptions
from agent.native.sink import EventSink, SinkOptions, pump

Event = dict[str, Any]

NLMSG_DONE = 3
CN_IDX_PROC = CN_VAL_PROC = 1
EV_NONE, EV_FORK, EV_EXEC, EV_UID = 0, 1, 2, 4
EV_GID, EV_SID, EV_PTRACE, EV_COMM = 0x40, 0x80, 0x100, 0x200
EV_COREDUMP, EV_EXIT = 0x40000000, 0x80000000


# ---------------------------------------------------------------------------------------------
# synthetic datagrams


def proc_event(
    what: int, data: bytes, *, cpu: int = 0, seq: int = 0, ts_ns: int = 0, union: int = 24
) -> bytes:
    """One datagram as the kernel sends it: nlmsghdr + cn_msg + struct proc_event (whose
    union is 24 bytes, so cn_msg.len is 40)."""
    event = struct.pack("=IIQ", what, cpu, ts_ns) + data.ljust(union, b"\0")
    cn = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, seq, 0, len(event), 0) + event
    return struct.pack("=IHHII", 16 + len(cn), NLMSG_DONE, 0, 0, 0) + cn


def monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def events_of(batches: Iterable[bytes]) -> list[Event]:
    out: list[Event] = []
    for batch in batches:
        decoded = msgpack.unpackb(batch, raw=False)
        assert isinstance(decoded, list)
        out += decoded
    return out


def decode(data: bytes, options: ProcConnectorOptions | None = None) -> tuple[list[Event], Any]:
    pc = ProcConnector(options or ProcConnectorOptions(listen=False))
    sink = EventSink()
    try:
        assert pc.decode(sink, data) == len(data)
        appended = sink.stats().events
        events = events_of(sink.seal())
        assert appended == len(events)
        return events, pc.stats()
    finally:
        pc.close()


def absent_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(pid_max - 1, 1, -1):
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    raise AssertionError("every pid is in use")


# ---------------------------------------------------------------------------------------------
# live


@pytest.fixture
def connector() -> Iterable[ProcConnector]:
    try:
        pc = ProcConnector()
    except PermissionError as exc:
        from conftest import skip_unless_ci

        skip_unless_ci(f"the proc connector needs CAP_NET_ADMIN in the initial namespaces: {exc}")
        raise
    try:
        yield pc
    finally:
        pc.close()


class Collector:
    """Drains a live connector into events until a predicate holds or time runs out."""

    def __init__(self, pc: ProcConnector) -> None:
        self.pc = pc
        self.sink = EventSink()
        self.events: list[Event] = []
        self.selector = selectors.DefaultSelector()
        self.selector.register(pc.fileno(), selectors.EVENT_READ)

    def until(self, done: Callable[[list[Event]], bool], timeout: float = 1.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        while not done(self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self.selector.select(left):
                pump(self.pc.drain, self.sink, self.take, seal=True)
        return self.events

    def take(self, batches: list[bytes]) -> None:
        self.events += events_of(batches)

    def find(self, **want: Any) -> list[Event]:
        return [e for e in self.events if all(e.get(k) == v for k, v in want.items())]


@pytest.mark.live
@pytest.mark.root
def test_live_fork_exec_exit(connector: ProcConnector) -> None:
    marker = f"cnproc-{uuid.uuid4().hex}"
    col = Collector(connector)
    child = subprocess.Popen(["/bin/sh", "-c", "sleep 1.5; exit 7", marker])
    try:
        started = time.monotonic()
        col.until(lambda evs: any(e["t"] == "exec" and e["pid"] == child.pid for e in evs))
        assert time.monotonic() - started < 1.0
        (exec_event,) = col.find(t="exec", pid=child.pid)
        assert exec_event["argv"] == ["/bin/sh", "-c", "sleep 1.5; exit 7", marker]
        assert exec_event["exe"] == os.path.realpath("/bin/sh")
        assert exec_event["ppid"] == os.getpid()
        assert exec_event["uid"] == os.getuid() and exec_event["euid"] == os.geteuid()
        assert exec_event["gid"] == os.getgid() and exec_event["egid"] == os.getegid()
        assert exec_event["cwd"] == os.getcwd()
        assert exec_event["comm"] == "sh"
        assert exec_event["src"] == "cnproc"
        assert abs(exec_event["ts"] - time.time() * 1000) < 5000
        assert "gone" not in exec_event and "partial" not in exec_event
        (fork_event,) = col.find(t="fork", pid=child.pid)
        assert fork_event["ppid"] == os.getpid()
        assert fork_event["ts"] <= exec_event["ts"]
    finally:
        assert child.wait(timeout=10) == 7
    col.until(lambda evs: any(e["t"] == "exit" and e["pid"] == child.pid for e in evs))
    (exit_event,) = col.find(t="exit", pid=child.pid)
    assert exit_event["code"] == 7 and "sig" not in exit_event
    assert exit_event["ppid"] == os.getpid()
    assert exit_event["xsig"] == 17  # SIGCHLD to the parent
    stats = connector.stats()
    assert stats.exec >= 1 and stats.fork >= 1 and stats.exit >= 1
    assert stats.malformed == 0 and stats.unknown == 0 and stats.foreign == 0


@pytest.mark.live
@pytest.mark.root
def test_live_exit_by_signal(connector: ProcConnector) -> None:
    col = Collector(connector)
    child = subprocess.Popen(["/bin/sleep", "30"])
    col.until(lambda evs: bool([e for e in evs if e["t"] == "exec" and e["pid"] == child.pid]))
    child.kill()
    child.wait(timeout=10)
    col.until(lambda evs: bool([e for e in evs if e["t"] == "exit" and e["pid"] == child.pid]))
    (exit_event,) = col.find(t="exit", pid=child.pid)
    assert exit_event["sig"] == 9 and "code" not in exit_event


def _python_child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)])


@pytest.mark.live
@pytest.mark.root
def test_live_uid_gid_change(connector: ProcConnector) -> None:
    col = Collector(connector)
    child = _python_child(
        """
        import os, time
        os.setgid(65534)
        os.setuid(65534)
        time.sleep(0.2)
        """
    )
    assert child.wait(timeout=10) == 0
    col.until(lambda evs: bool(col.find(t="uid", pid=child.pid)) and bool(col.find(t="gid", pid=child.pid)))
    (gid_event,) = col.find(t="gid", pid=child.pid)
    (uid_event,) = col.find(t="uid", pid=child.pid)
    assert (gid_event["gid"], gid_event["egid"]) == (65534, 65534)
    assert (uid_event["uid"], uid_event["euid"]) == (65534, 65534)
    assert gid_event["ts"] <= uid_event["ts"]


@pytest.mark.live
@pytest.mark.root
def test_live_comm_change(connector: ProcConnector) -> None:
    col = Collector(connector)
    child = _python_child(
        """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl(15, b"cnproc-newname", 0, 0, 0) == 0  # PR_SET_NAME
        """
    )
    assert child.wait(timeout=10) == 0
    col.until(lambda evs: bool(col.find(t="comm", pid=child.pid)))
    assert [e["comm"] for e in col.find(t="comm", pid=child.pid)] == ["cnproc-newname"]


@pytest.mark.live
@pytest.mark.root
def test_live_ptrace_attach_detach(connector: ProcConnector) -> None:
    col = Collector(connector)
    # A helper traces its own child: attach, wait for the stop, detach.
    tracer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import ctypes, os, subprocess, sys
                libc = ctypes.CDLL(None, use_errno=True)
                libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
                child = subprocess.Popen(["/bin/sleep", "30"])
                print(child.pid, flush=True)
                assert libc.ptrace(16, child.pid, None, None) == 0, ctypes.get_errno()
                os.waitpid(child.pid, 0x40000000)  # __WALL: the attach stop
                assert libc.ptrace(17, child.pid, None, None) == 0, ctypes.get_errno()
                child.kill()
                child.wait()
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert tracer.stdout is not None
    traced = int(tracer.stdout.readline())
    assert tracer.wait(timeout=10) == 0
    col.until(lambda evs: len(col.find(t="ptrace", pid=traced)) >= 2)
    ops = col.find(t="ptrace", pid=traced)
    assert [e["op"] for e in ops] == ["attach", "detach"]
    assert ops[0]["tracer"] == tracer.pid
    assert "tracer" not in ops[1]


@pytest.mark.live
@pytest.mark.root
def test_live_coredump(connector: ProcConnector) -> None:
    col = Collector(connector)
    import resource

    def no_core_file() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # A shell without job control starts background commands with SIGQUIT ignored, and
        # the child would inherit that: the default action (dump core) is what is tested.
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)

    child = subprocess.Popen(["/bin/sleep", "30"], preexec_fn=no_core_file)  # noqa: PLW1509
    col.until(lambda evs: bool(col.find(t="exec", pid=child.pid)))
    child.send_signal(3)  # SIGQUIT dumps core (none is written with RLIMIT_CORE 0)
    child.wait(timeout=10)
    col.until(lambda evs: bool(col.find(t="exit", pid=child.pid)))
    (dump,) = col.find(t="coredump", pid=child.pid)
    assert dump["ppid"] == os.getpid()
    (exit_event,) = col.find(t="exit", pid=child.pid)
    assert exit_event["sig"] == 3


@pytest.mark.live
@pytest.mark.root
def test_live_sid(connector: ProcConnector) -> None:
    col = Collector(connector)
    child = subprocess.Popen(["/bin/sleep", "0.2"], start_new_session=True)
    child.wait(timeout=10)
    col.until(lambda evs: bool(col.find(t="sid", pid=child.pid)))
    assert len(col.find(t="sid", pid=child.pid)) == 1


@pytest.mark.live
@pytest.mark.root
def test_live_burst_of_short_processes(connector: ProcConnector) -> None:
    """Processes that exit before they are read still give exec events, flagged `gone`."""
    col = Collector(connector)
    children = [subprocess.Popen(["/bin/true"]) for _ in range(60)]
    pids = {c.pid for c in children}
    for c in children:
        c.wait(timeout=10)
    col.until(lambda evs: pids <= {e["pid"] for e in evs if e["t"] == "exit"}, timeout=5)
    execs = [e for e in col.events if e["t"] == "exec" and e["pid"] in pids]
    assert {e["pid"] for e in execs} == pids
    gone = [e for e in execs if e.get("gone")]
    for e in gone:
        # The parent, from the fork the connector saw moments earlier (this process).
        assert set(e) == {"t", "ts", "src", "pid", "gone", "ppid"} and e["ppid"] == os.getpid()
    for e in execs:
        if not e.get("gone") and not e.get("partial"):
            assert e["exe"] == os.path.realpath("/bin/true")
    stats = connector.stats()
    assert stats.gone >= len(gone)
    # Every exit names this process, also where the kernel sent 0 (reaped before its event).
    exits = [e for e in col.events if e["t"] == "exit" and e["pid"] in pids]
    assert len(exits) == len(pids) and {e.get("ppid") for e in exits} == {os.getpid()}


@pytest.mark.live
@pytest.mark.root
def test_live_threads_filtered_unless_asked() -> None:
    code = """
        import threading
        t = threading.Thread(target=lambda: None)
        t.start(); t.join()
        """
    for threads in (False, True):
        try:
            pc = ProcConnector(ProcConnectorOptions(threads=threads))
        except PermissionError as exc:
            from conftest import skip_unless_ci

            skip_unless_ci(f"no CAP_NET_ADMIN: {exc}")
            raise
        with pc:
            col = Collector(pc)
            child = _python_child(code)
            assert child.wait(timeout=10) == 0
            col.until(lambda evs: bool(col.find(t="exit", pid=child.pid, code=0)),  # noqa: B023
                      timeout=3)  # (the lambda runs within this iteration)
            thread_forks = [e for e in col.find(t="fork", pid=child.pid) if "tid" in e]
            if threads:
                assert len(thread_forks) == 1 and thread_forks[0]["tid"] != child.pid
                assert pc.stats().threads_filtered == 0
            else:
                assert thread_forks == []
                assert pc.stats().threads_filtered >= 2  # the thread's fork and exit


@pytest.mark.live
@pytest.mark.root
def test_listen_twice_and_fileno() -> None:
    try:
        a, b = ProcConnector(), ProcConnector()
    except PermissionError as exc:
        from conftest import skip_unless_ci

        skip_unless_ci(f"no CAP_NET_ADMIN: {exc}")
        raise
    with a, b:
        assert a.fileno() >= 0 and b.fileno() >= 0 and a.fileno() != b.fileno()
        ca, cb = Collector(a), Collector(b)
        child = subprocess.Popen(["/bin/true"])
        child.wait()
        for col in (ca, cb):
            col.until(lambda evs: bool(col.find(t="exit", pid=child.pid)))  # noqa: B023 (now)
            assert col.find(t="exec", pid=child.pid)
    with pytest.raises(CoreClosedError):
        a.fileno()


# ---------------------------------------------------------------------------------------------
# synthetic


def test_decode_every_type() -> None:
    ts = monotonic_ns()
    data = b"".join(
        [
            proc_event(EV_FORK, struct.pack("=iiii", 100, 100, 200, 200), seq=1, ts_ns=ts),
            proc_event(EV_FORK, struct.pack("=iiii", 101, 100, 201, 200), seq=2, ts_ns=ts),
            proc_event(EV_UID, struct.pack("=iiII", 200, 200, 1000, 0), seq=3),
            proc_event(EV_GID, struct.pack("=iiII", 200, 200, 50, 51), seq=4),
            proc_event(EV_SID, struct.pack("=ii", 200, 200), seq=5),
            proc_event(EV_PTRACE, struct.pack("=iiii", 200, 200, 300, 300), seq=6),
            proc_event(EV_PTRACE, struct.pack("=iiii", 200, 200, 0, 0), seq=7),
            proc_event(EV_COMM, struct.pack("=ii16s", 200, 200, b"worker\xff"), seq=8),
            proc_event(EV_COMM, struct.pack("=ii16s", 200, 200, b"A" * 16), seq=9),
            proc_event(EV_COREDUMP, struct.pack("=iiii", 200, 200, 100, 100), seq=10),
            proc_event(EV_EXIT, struct.pack("=iiIiii", 200, 200, 3 << 8, 17, 100, 100), seq=11),
            proc_event(EV_EXIT, struct.pack("=iiIiii", 201, 201, 0x80 | 11, 17, 1, 1), seq=12),
            proc_event(EV_EXIT, struct.pack("=iiIiii", 202, 202, 15, 17, 1, 1), seq=13),
            proc_event(EV_EXIT, struct.pack("=iiIiii", 203, 200, 0, -1, 1, 1), seq=14),
            proc_event(EV_NONE, struct.pack("=I", 0), seq=0),
        ]
    )
    events, stats = decode(data, ProcConnectorOptions(listen=False, enrich=False))
    now_ms = time.time() * 1000
    assert abs(events[0]["ts"] - now_ms) < 5000
    for e in events:
        assert e["src"] == "cnproc"
        del e["ts"], e["src"]
    # Without `threads`, the thread fork (tid 201 in group 200) and thread exit are filtered.
    assert [e for e in events if "tid" in e] == []
    assert events == [
        {"t": "fork", "pid": 200, "ppid": 100},
        {"t": "uid", "pid": 200, "uid": 1000, "euid": 0},
        {"t": "gid", "pid": 200, "gid": 50, "egid": 51},
        {"t": "sid", "pid": 200},
        {"t": "ptrace", "pid": 200, "op": "attach", "tracer": 300},
        {"t": "ptrace", "pid": 200, "op": "detach"},
        {"t": "comm", "pid": 200, "comm": b"worker\xff"},
        {"t": "comm", "pid": 200, "comm": "A" * 16},
        {"t": "coredump", "pid": 200, "ppid": 100},
        {"t": "exit", "pid": 200, "code": 3, "xsig": 17, "ppid": 100},
        {"t": "exit", "pid": 201, "sig": 11, "core": True, "xsig": 17, "ppid": 1},
        {"t": "exit", "pid": 202, "sig": 15, "xsig": 17, "ppid": 1},
    ]
    assert stats.threads_filtered == 2
    assert stats.acks == 1 and stats.events == 12 and stats.messages == 15
    assert (stats.fork, stats.uid, stats.gid, stats.sid, stats.ptrace) == (2, 1, 1, 1, 2)
    assert (stats.comm, stats.coredump, stats.exit, stats.exec) == (2, 1, 4, 0)
    assert stats.gaps == 0 and stats.malformed == 0

    events, stats = decode(data, ProcConnectorOptions(listen=False, enrich=False, threads=True))
    threaded = [{k: v for k, v in e.items() if k not in ("ts", "src")} for e in events if "tid" in e]
    assert threaded == [
        {"t": "fork", "pid": 200, "tid": 201, "ppid": 100, "ptid": 101},
        {"t": "exit", "pid": 200, "tid": 203, "code": 0, "xsig": -1, "ppid": 1},
    ]
    assert stats.threads_filtered == 0


def test_decode_old_kernel_exit_without_parent() -> None:
    # Before Linux 4.18 exit and coredump had no parent fields: cn_msg.len is shorter.
    data = proc_event(EV_EXIT, struct.pack("=iiIi", 5, 5, 1 << 8, 17), union=16)
    data += proc_event(EV_COREDUMP, struct.pack("=ii", 6, 6), union=8, seq=1)
    events, stats = decode(data, ProcConnectorOptions(listen=False, enrich=False))
    assert [(e["t"], e.get("code"), "ppid" in e) for e in events] == [
        ("exit", 1, False),
        ("coredump", None, False),
    ]
    assert stats.malformed == 0


def test_decode_exit_whose_parent_reaped_it_first_names_the_forks_parent() -> None:
    """The kernel fills an exit's parent only while the child's pid is attached; a parent that
    reaps the zombie before the exit event is made (a wait loop on another CPU) leaves it 0.
    Such an exit carried `ppid: 0` and was not attributed to its parent: the one exit a fork
    storm test missed now and then. The fork of that pid, seen earlier, names the parent."""
    data = b"".join([
        proc_event(EV_FORK, struct.pack("=iiii", 100, 100, 300, 300), seq=1),
        proc_event(EV_EXIT, struct.pack("=iiIiii", 300, 300, 0, 17, 0, 0), seq=2),
        # Nobody's fork remembered: no ppid at all rather than a false 0.
        proc_event(EV_EXIT, struct.pack("=iiIiii", 301, 301, 0, 17, 0, 0), seq=3),
        # The kernel's own parent wins when it sent one.
        proc_event(EV_FORK, struct.pack("=iiii", 100, 100, 302, 302), seq=4),
        proc_event(EV_EXIT, struct.pack("=iiIiii", 302, 302, 0, 17, 1, 1), seq=5),
        # A pid that reuses a slot (pid % 1024) replaces the older fork: 300's is gone.
        proc_event(EV_FORK, struct.pack("=iiii", 7, 7, 300 + 1024, 300 + 1024), seq=6),
        proc_event(EV_EXIT, struct.pack("=iiIiii", 300, 300, 0, 17, 0, 0), seq=7),
        proc_event(EV_EXIT, struct.pack("=iiIiii", 300 + 1024, 300 + 1024, 0, 17, 0, 0), seq=8),
        # An old kernel's exit (no parent fields) is told the same way.
        proc_event(EV_FORK, struct.pack("=iiii", 9, 9, 303, 303), seq=9),
        proc_event(EV_EXIT, struct.pack("=iiIi", 303, 303, 0, 17), seq=10, union=16),
    ])
    events, stats = decode(data, ProcConnectorOptions(listen=False, enrich=False))
    exits = [(e["pid"], e.get("ppid")) for e in events if e["t"] == "exit"]
    assert exits == [(300, 100), (301, None), (302, 1), (300, None), (1324, 7), (303, 9)]
    assert stats.parent_recalled == 3 and stats.parent_unknown == 2


def test_decode_exec_of_absent_pid_is_gone() -> None:
    pid = absent_pid()
    events, stats = decode(proc_event(EV_EXEC, struct.pack("=ii", pid, pid), ts_ns=monotonic_ns()))
    assert len(events) == 1
    event = events[0]
    assert event["t"] == "exec" and event["pid"] == pid and event["gone"] is True
    assert abs(event["ts"] - time.time() * 1000) < 5000
    assert set(event) == {"t", "ts", "src", "pid", "gone"}
    assert stats.gone == 1 and stats.exec == 1 and stats.events == 1
    # Its fork, when seen, still names the parent of a process gone before /proc was read.
    fork = proc_event(EV_FORK, struct.pack("=iiii", 100, 100, pid, pid))
    events, stats = decode(fork + proc_event(EV_EXEC, struct.pack("=ii", pid, pid), seq=1,
                                             ts_ns=monotonic_ns()))
    assert [(e["t"], e.get("gone"), e.get("ppid")) for e in events] == [("fork", None, 100),
                                                                        ("exec", True, 100)]


def test_decode_exec_of_own_pid_is_enriched() -> None:
    import psutil

    me = psutil.Process()
    pid = os.getpid()
    events, stats = decode(proc_event(EV_EXEC, struct.pack("=ii", pid, pid), ts_ns=monotonic_ns()))
    (event,) = events
    assert event["argv"] == me.cmdline()
    assert event["exe"] == me.exe()
    assert event["cwd"] == os.getcwd()
    assert event["ppid"] == os.getppid()
    assert (event["uid"], event["euid"], event["gid"], event["egid"]) == (
        os.getuid(), os.geteuid(), os.getgid(), os.getegid()
    )
    assert event["comm"] == me.name()
    assert "gone" not in event and "partial" not in event
    assert stats.gone == 0 and stats.partial == 0


def test_decode_exec_before_the_process_started_is_a_reused_pid() -> None:
    """An exec stamped before the process now holding that pid started belongs to an older
    process: its details must not be taken from the new one."""
    pid = os.getpid()
    events, stats = decode(proc_event(EV_EXEC, struct.pack("=ii", pid, pid), ts_ns=1))
    (event,) = events
    assert event["gone"] is True and "argv" not in event
    assert stats.reused == 1 and stats.gone == 1


def test_decode_exec_argv_bounds() -> None:
    args = ["/bin/sleep", "30"] + [f"{i}" for i in range(30)]
    cmdline = b"".join(a.encode() + b"\0" for a in args)
    assert len(cmdline) > 64
    child = subprocess.Popen(args)
    try:
        time.sleep(0.1)
        data = proc_event(EV_EXEC, struct.pack("=ii", child.pid, child.pid), ts_ns=monotonic_ns())
        (event,), stats = decode(data, ProcConnectorOptions(listen=False, max_args=5))
        assert event["argv"] == args[:5] and event["trunc"] is True
        assert stats.argv_truncated == 1
        (event,), stats = decode(data, ProcConnectorOptions(listen=False, max_argv_bytes=64))
        # The first 64 bytes end just after "19": 22 whole arguments.
        assert event["argv"] == args[:22]
        assert event["trunc"] is True and stats.argv_truncated == 1
        (event,), _ = decode(data)
        assert event["argv"] == args and "trunc" not in event
        # Exactly max_argv_bytes is not a cut: nothing was left unread.
        (event,), _ = decode(data, ProcConnectorOptions(listen=False, max_argv_bytes=len(cmdline)))
        assert event["argv"] == args and "trunc" not in event
    finally:
        child.kill()
        child.wait()


def test_decode_malformed_is_counted_never_crashes() -> None:
    good = proc_event(EV_FORK, struct.pack("=iiii", 1, 1, 2, 2))
    opts = ProcConnectorOptions(listen=False, enrich=False)
    # Every truncation of a good datagram.
    for cut in range(len(good)):
        events, stats = decode(good[:cut], opts)
        assert events == []
        assert stats.malformed == (1 if cut else 0), cut
    # nlmsg_len beyond the datagram, below the header.
    for bad_len in (len(good) + 1, 15, 0, 0xFFFFFFFF):
        events, stats = decode(struct.pack("=I", bad_len) + good[4:], opts)
        assert events == [] and stats.malformed == 1
    # cn_msg.len beyond the message; too short for the proc_event header.
    for cn_len in (41, 0xFFFF, 15):
        data = bytearray(good)
        struct.pack_into("=H", data, 16 + 16, cn_len)
        events, stats = decode(bytes(data), opts)
        assert events == [] and stats.malformed == 1, cn_len
    # cn_msg.len too short for the event's own data (fork needs 16 bytes).
    events, stats = decode(proc_event(EV_FORK, b"\1" * 12, union=12), opts)
    assert events == [] and stats.malformed == 1
    # Another connector index.
    data = bytearray(good)
    struct.pack_into("=I", data, 16, 7)
    events, stats = decode(bytes(data), opts)
    assert events == [] and stats.malformed == 1
    # An unknown `what`, then a good one: skipped, counted, the next decoded.
    events, stats = decode(proc_event(0x400, b"\1" * 24) + good, opts)
    assert [e["t"] for e in events] == ["fork"] and stats.unknown == 1
    # A netlink message type other than NLMSG_DONE.
    data = bytearray(good)
    struct.pack_into("=H", data, 4, 2)
    events, stats = decode(bytes(data), opts)
    assert events == [] and stats.malformed == 1
    # Garbage of many sizes.
    import random

    rng = random.Random(1)
    for size in range(0, 300, 7):
        decode(bytes(rng.getrandbits(8) for _ in range(size)), opts)


@pytest.mark.live
@pytest.mark.root
def test_live_probe_reaches_every_cpu_and_is_no_event(connector: ProcConnector) -> None:
    """Every CPU is unsure after listening; one probe each makes it send, the probes come back
    as no event, the thread's affinity is what it was, and a second call has nothing to do."""
    before = os.sched_getaffinity(0)
    col = Collector(connector)
    sent = connector.probe()
    assert os.sched_getaffinity(0) == before
    assert sent == len(before) and connector.stats().probe_failed == 0
    col.until(lambda evs: connector.stats().probes_seen >= sent, timeout=5)
    assert connector.stats().probes_seen == sent
    assert not col.find(t="comm", pid=os.getpid())
    assert connector.probe() == 0


@pytest.mark.live
@pytest.mark.root
def test_live_overrun_at_the_end_of_a_burst_is_counted() -> None:
    """A burst into a small receive queue that nobody reads overruns it; the losses are counted
    from the per-CPU sequences even where the last messages of a CPU were the ones lost,
    because the probes make every CPU send once more: exits seen + lost covers every child."""
    pc = ProcConnector(ProcConnectorOptions(rcvbuf=65536, enrich=False))

    def settled() -> bool:
        """Reads until no CPU is unsure (a probe lost in an overrun is sent again)."""
        for _ in range(50):
            col.until(lambda evs: False, timeout=0.2)
            if pc.probe() == 0:
                return True
        return False

    try:
        col = Collector(pc)
        assert settled()
        children = 1000
        burst = _python_child(
            f"""
            import os
            for _ in range({children}):
                if os.fork() == 0:
                    os._exit(0)
                os.wait()
            """
        )
        assert burst.wait(timeout=60) == 0
        assert settled(), pc.stats()
        stats = pc.stats()
        assert stats.enobufs > 0, "the burst did not overrun the queue"
        exits = len(col.find(t="exit", ppid=burst.pid))
        assert stats.probes_seen <= stats.probes  # a busy machine may have made every CPU send first
        assert exits < children and exits + stats.lost >= children, (exits, stats.lost)
    finally:
        pc.close()


def test_sequence_gaps_per_cpu() -> None:
    fork = struct.pack("=iiii", 1, 1, 2, 2)
    data = b"".join(
        [
            proc_event(EV_FORK, fork, cpu=0, seq=10),
            proc_event(EV_FORK, fork, cpu=1, seq=500),
            proc_event(EV_FORK, fork, cpu=0, seq=11),
            proc_event(EV_NONE, b"", cpu=0xFFFFFFFF, seq=3),  # an ack echoes its request seq
            proc_event(EV_FORK, fork, cpu=1, seq=501),
            proc_event(EV_FORK, fork, cpu=0, seq=14),  # 12, 13 lost
            proc_event(EV_FORK, fork, cpu=1, seq=510),  # 502..509 lost
            proc_event(EV_FORK, fork, cpu=0, seq=2),  # backwards: tracking restarts
            proc_event(EV_FORK, fork, cpu=0, seq=3),
        ]
    )
    events, stats = decode(data, ProcConnectorOptions(listen=False, enrich=False))
    assert len(events) == 8
    assert stats.gaps == 2 and stats.lost == 10 and stats.seq_resets == 1 and stats.acks == 1


def test_sink_full_resumes_without_loss() -> None:
    ts = monotonic_ns()
    data = b"".join(
        proc_event(EV_EXIT, struct.pack("=iiIiii", p, p, 0, 17, 1, 1), seq=p, ts_ns=ts)
        for p in range(1, 2001)
    )
    pc = ProcConnector(ProcConnectorOptions(listen=False, enrich=False))
    sink = EventSink(SinkOptions(batch_bytes=1024, max_batches=1))
    batches: list[bytes] = []
    offset = 0
    rounds = 0
    while True:
        offset += pc.decode(sink, data[offset:])
        batches += sink.take()
        rounds += 1
        if offset == len(data):
            break
        assert rounds < 10000
    batches += sink.seal()
    events = events_of(batches)
    assert [e["pid"] for e in events] == list(range(1, 2001))
    assert pc.stats().dropped == 0 and sink.stats().dropped_full == 0
    assert rounds > 10
    pc.close()


def test_bad_options() -> None:
    for bad in (
        ProcConnectorOptions(listen=False, max_args=0),
        ProcConnectorOptions(listen=False, max_argv_bytes=10),
        ProcConnectorOptions(listen=False, max_argv_bytes=1 << 30),
    ):
        with pytest.raises(CoreArgumentError):
            ProcConnector(bad)
    with pytest.raises(CoreArgumentError):
        ProcConnector(ProcConnectorOptions(listen=False, rcvbuf=-1))


def test_decoder_has_no_socket() -> None:
    with ProcConnector(ProcConnectorOptions(listen=False)) as pc:
        assert pc.fileno() == -1
        with pytest.raises(CoreArgumentError):
            pc.drain(EventSink())


# ---------------------------------------------------------------------------------------------
# leaks


@pytest.mark.live
@pytest.mark.root
def test_leaks() -> None:
    from leakcheck import assert_rss_flat

    ts = monotonic_ns()
    pid = os.getpid()
    absent = absent_pid()
    datagrams = b"".join(
        [
            proc_event(EV_FORK, struct.pack("=iiii", 1, 1, 2, 2), ts_ns=ts),
            proc_event(EV_EXEC, struct.pack("=ii", pid, pid), ts_ns=ts),
            proc_event(EV_EXEC, struct.pack("=ii", absent, absent), ts_ns=ts),
            proc_event(EV_COMM, struct.pack("=ii16s", 3, 3, b"x"), ts_ns=ts),
            proc_event(EV_EXIT, struct.pack("=iiIiii", 2, 2, 0, 17, 1, 1), ts_ns=ts),
            proc_event(0x400, b""),
            b"\1\2\3",
        ]
    )
    decoder = ProcConnector(ProcConnectorOptions(listen=False))
    sink = EventSink()

    def decode_once() -> None:
        decoder.decode(sink, datagrams)
        sink.seal()

    assert_rss_flat(decode_once, name="am_cnproc_decode")
    assert_rss_flat(decoder.stats, name="am_cnproc_stats")
    assert_rss_flat(lambda: ProcConnector(ProcConnectorOptions(listen=False)).close(),
                    name="am_cnproc_new/free")
    try:
        live = ProcConnector()
    except PermissionError as exc:
        from conftest import skip_unless_ci

        skip_unless_ci(f"no CAP_NET_ADMIN: {exc}")
        raise

    def drain_once() -> None:
        live.drain(sink)
        live.fileno()
        sink.seal()

    assert_rss_flat(drain_once, name="am_cnproc_drain")
    live.close()
    assert_rss_flat(lambda: ProcConnector().close(), name="am_cnproc_listen/close")

    def listen_probe_close() -> None:
        pc = ProcConnector()
        pc.probe()  # every CPU is unsure after listening: the CPU sets are allocated
        pc.close()

    assert_rss_flat(listen_probe_close, name="am_cnproc_probe")
    decoder.close()
