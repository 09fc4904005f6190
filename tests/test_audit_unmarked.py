"""The audit parser's unmarked mode (am_audit_nl_unmarked), with crafted netlink records: what
the live source does when, as owner, it excluded EOE and PROCTITLE (docs/sources/
audit-netlink.md, "Records asked for"). Events complete at the drain end after the one in
which their last record came; a record of an event already completed is counted and dropped;
exec events without EXECVE take `title` from the parser's title cache, else /proc.

No socket, no privilege: the /proc cases read this test's own children."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
from kernel_audit import proctitle_parts

from agent.native import record_type_number
from agent.native.audit_netlink import NetlinkDecoder

HEADER = struct.Struct("=IHHII")
SYSCALL, SOCKADDR, CWD, EXECVE, EOE, PROCTITLE = 1300, 1306, 1307, 1309, 1320, 1327
STAMP = "audit(1717171717.%03d:%d): "
# A pid no process has (above the largest pid_max, 2^22).
NO_PID = 4194305


def record(rtype: int, serial: int, fields: str, ms: int = 123) -> bytes:
    payload = (STAMP % (ms, serial) + fields).encode()
    return HEADER.pack(len(payload), rtype, 0, 0, 0) + payload


def hexed(value: bytes) -> str:
    return value.hex().upper()


def exec_syscall(pid: int, exe: bytes, ok: bool = True) -> str:
    return (f"arch=c000003e syscall=59 success={'yes' if ok else 'no'} "
            f"exit={0 if ok else -2} a0=1 a1=2 a2=3 a3=0 items=1 ppid=1 pid={pid} auid=0 "
            f"uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=1 "
            f'comm="x" exe={hexed(exe)} key="iot-micro-agent"')


def connect_syscall(pid: int) -> str:
    return (f"arch=c000003e syscall=42 success=yes exit=0 a0=3 a1=4 a2=10 a3=0 items=0 "
            f"ppid=1 pid={pid} auid=0 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 "
            f'fsgid=0 tty=(none) ses=1 comm="nc" exe="/usr/bin/nc" key="iot-micro-agent"')


def execve(args: list[bytes]) -> str:
    return f"argc={len(args)} " + " ".join(f"a{i}={hexed(a)}" for i, a in enumerate(args))


SOCKADDR_V4 = "saddr=02000050C0A80001" + "0" * 16  # AF_INET 192.168.0.1:80


def events_of(batches: list[bytes]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for batch in batches:
        out += msgpack.unpackb(batch, raw=False)
    return out


def feed(decoder: NetlinkDecoder, *datagrams: bytes) -> list[dict[str, Any]]:
    batches: list[bytes] = []
    for d in datagrams:
        batches += decoder.feed(d)
    return events_of(batches)


def unmarked() -> NetlinkDecoder:
    decoder = NetlinkDecoder()
    decoder.unmarked()
    return decoder


def an_exec(serial: int, pid: int, exe: bytes, args: list[bytes], ms: int = 123) -> list[bytes]:
    return [record(SYSCALL, serial, exec_syscall(pid, exe), ms),
            record(EXECVE, serial, execve(args), ms),
            record(CWD, serial, 'cwd="/"', ms)]


def a_failed_exec(serial: int, pid: int, exe: bytes, ms: int = 123) -> list[bytes]:
    return [record(SYSCALL, serial, exec_syscall(pid, exe, ok=False), ms),
            record(CWD, serial, 'cwd="/"', ms)]


# ---------------------------------------------------------------------------------------------
# completion at drain ends


def test_an_event_completes_at_the_end_of_the_drain_after_its_last_record() -> None:
    d = unmarked()
    assert feed(d, *an_exec(5, 77, b"/usr/bin/true", [b"true", b"x"])) == []
    assert events_of(d.drain_end(1000)) == []  # its records came in this drain: it may go on
    d.feed(record(CWD, 6, 'cwd="/tmp"'))  # another event's record, in the next drain
    assert events_of(d.drain_end(1020)) == []  # 20 ms after its drain's end: too soon
    (done,) = events_of(d.drain_end(1045))  # 45 ms after: complete; 6 is 25 ms old
    assert (done["sn"], done["argv"], done["cwd"]) == (5, ["true", "x"], "/")
    stats = d.stats()
    assert stats.unmarked_completed == 1 and stats.parser.timeouts == 0
    assert stats.parser.forced == 0 and stats.late_records == 0
    assert events_of(d.drain_end(1055)) == []  # 6's drain ended at 1020
    assert [e["cwd"] for e in events_of(d.drain_end(1060))] == ["/tmp"]
    assert d.stats().unmarked_completed == 2
    assert events_of(d.drain_end(1200) + d.flush()) == []


def test_interleaved_events_complete_each_after_its_own_last_record() -> None:
    d = unmarked()
    feed(d, record(SYSCALL, 10, exec_syscall(70, b"/bin/a")),
         record(SYSCALL, 11, connect_syscall(71)),
         record(EXECVE, 10, execve([b"a", b"1"])))
    assert events_of(d.drain_end(1000)) == []
    feed(d, record(SOCKADDR, 11, SOCKADDR_V4), record(CWD, 10, 'cwd="/a"'))
    assert events_of(d.drain_end(1100)) == []  # both had a record in this drain
    feed(d, record(SYSCALL, 12, exec_syscall(72, b"/bin/c")))
    done = events_of(d.drain_end(1200))
    assert sorted(e["sn"] for e in done) == [10, 11]
    by_sn = {e["sn"]: e for e in done}
    assert by_sn[10]["argv"] == ["a", "1"] and by_sn[10]["cwd"] == "/a"
    assert by_sn[11]["t"] == "net" and by_sn[11]["raddr"] == "192.168.0.1"
    assert by_sn[11]["rport"] == 80
    assert [e["sn"] for e in events_of(d.drain_end(1300))] == [12]
    assert d.stats().unmarked_completed == 3 and d.stats().parser.gaps == 0


def test_a_record_after_its_event_completed_is_counted_not_a_new_event() -> None:
    d = unmarked()
    feed(d, record(SYSCALL, 20, exec_syscall(80, b"/bin/a")))
    d.drain_end(1000)
    assert [e["sn"] for e in events_of(d.drain_end(1100))] == [20]
    # Its EXECVE and CWD arrive a drain later still: counted, dropped.
    assert feed(d, record(EXECVE, 20, execve([b"a"])), record(CWD, 20, 'cwd="/"')) == []
    assert events_of(d.drain_end(1200) + d.drain_end(1300) + d.flush()) == []
    stats = d.stats()
    assert stats.late_records == 2 and stats.parser.events == 1
    assert stats.parser.duplicates == 0 and stats.records == 3
    # A serial older than the loss tracker's window is late too; a new serial is not.
    feed(d, record(SYSCALL, 21 + 5000, exec_syscall(81, b"/bin/b")))
    assert [e["sn"] for e in events_of(d.drain_end(1400) + d.drain_end(1500))] == [5021]
    feed(d, record(SYSCALL, 22, exec_syscall(82, b"/bin/c")))
    assert d.stats().late_records == 3
    assert events_of(d.drain_end(1600) + d.drain_end(1700)) == []


def test_marks_still_complete_at_once_and_the_default_mode_ignores_drain_ends() -> None:
    d = unmarked()  # a PROCTITLE (the exclusion deleted by someone) still ends its event
    feed(d, *an_exec(30, 90, b"/bin/a", [b"a"]), record(PROCTITLE, 30, "proctitle=61"))
    assert d.stats().parser.events == 1  # completed on PROCTITLE, before any drain end
    assert [e["sn"] for e in events_of(d.flush())] == [30]
    assert d.stats().unmarked_completed == 0
    plain = NetlinkDecoder()  # not unmarked: drain ends change nothing, as for log text
    feed(plain, *an_exec(31, 91, b"/bin/a", [b"a"]))
    assert events_of(plain.drain_end(1000) + plain.drain_end(2000)) == []
    feed(plain, record(EXECVE, 31, execve([b"a"])))  # no late-record check either
    stats = plain.stats()
    assert stats.late_records == 0 and stats.unmarked_completed == 0
    assert stats.titles_learnt == 0
    assert [e["sn"] for e in events_of(plain.flush())] == [31]


# ---------------------------------------------------------------------------------------------
# titles without PROCTITLE


def test_a_failed_exec_takes_the_title_its_pid_learnt_from_its_exec() -> None:
    d = unmarked()
    feed(d, *an_exec(40, NO_PID, b"/bin/sh", [b"sh", b"-c", b"run it"]))
    d.drain_end(1000)
    assert events_of(d.drain_end(1100))[0]["argv"] == ["sh", "-c", "run it"]
    assert d.stats().titles_learnt == 1
    feed(d, *a_failed_exec(41, NO_PID, b"/bin/sh", ms=900))
    d.drain_end(1200)
    (failed,) = events_of(d.drain_end(1300))
    assert failed["t"] == "exec" and failed["ok"] is False and "argv" not in failed
    assert failed["title"] == ["sh", "-c", "run it"]
    assert d.stats().titles_cached == 1 and d.stats().titles_missing == 0


def test_a_pid_reused_by_another_program_or_too_late_borrows_no_title() -> None:
    d = unmarked()
    feed(d, *an_exec(50, NO_PID, b"/bin/sh", [b"sh", b"script"]))
    d.drain_end(1000)
    d.drain_end(1100)
    # The same pid, another exe: not the process that learnt the title (and /proc has no
    # such pid).
    feed(d, *a_failed_exec(51, NO_PID, b"/usr/bin/python3"))
    d.drain_end(1200)
    (other,) = events_of(d.drain_end(1300))
    assert "title" not in other
    # The same exe, but more than a second of stream time later: the pid may have been
    # reused by a fork of another /bin/sh.
    feed(d, *a_failed_exec(52, NO_PID, b"/bin/sh", ms=999))
    d.drain_end(1400)
    (same,) = events_of(d.drain_end(1500))
    assert same["title"] == ["sh", "script"]  # within a second: still that process
    late = [record(SYSCALL, 53, exec_syscall(NO_PID, b"/bin/sh", ok=False)).replace(
        b"1717171717.", b"1717171719."), record(CWD, 53, 'cwd="/"')]
    feed(d, *late)
    d.drain_end(1600)
    (stale,) = events_of(d.drain_end(1700))
    assert stale["sn"] == 53 and "title" not in stale
    stats = d.stats()
    assert (stats.titles_cached, stats.titles_proc, stats.titles_missing) == (1, 0, 2)


def test_the_title_is_what_proctitle_would_carry_128_bytes_at_most() -> None:
    d = unmarked()
    args = [b"prog", b"", b"x" * 60, b"\xff\xfe", b"y" * 100]
    feed(d, *an_exec(60, NO_PID, b"/bin/prog", args))
    d.drain_end(1000)
    d.drain_end(1100)
    feed(d, *a_failed_exec(61, NO_PID, b"/bin/prog"))
    d.drain_end(1200)
    (failed,) = events_of(d.drain_end(1300))
    want = proctitle_parts(args)
    got = [t if isinstance(t, bytes) else t.encode() for t in failed["title"]]
    assert got == want and sum(len(t) + 1 for t in got) - 1 == 128


def _failed_exec_of(d: NetlinkDecoder, serial: int, pid: int, exe: bytes) -> dict[str, Any]:
    feed(d, *a_failed_exec(serial, pid, exe))
    d.drain_end(10_000 + serial * 100)
    (event,) = events_of(d.drain_end(10_050 + serial * 100))
    assert event["sn"] == serial
    return event


def test_a_miss_reads_proc_once_and_a_vanished_process_gives_none() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)", "title-test"]
    child = subprocess.Popen(argv)
    try:
        for _ in range(100):  # until the child runs python, not the forked test
            if Path(f"/proc/{child.pid}/cmdline").read_bytes().endswith(b"title-test\0"):
                break
            time.sleep(0.02)
        exe = os.readlink(f"/proc/{child.pid}/exe").encode()
        d = unmarked()
        event = _failed_exec_of(d, 70, child.pid, exe)
        assert event["title"] == argv
        assert d.stats().titles_proc == 1
        again = _failed_exec_of(d, 71, child.pid, exe)  # now kept: no second read
        assert again["title"] == argv
        assert (d.stats().titles_proc, d.stats().titles_cached) == (1, 1)
        # The live process under another exe than the event says: not the event's process.
        other = unmarked()
        assert "title" not in _failed_exec_of(other, 72, child.pid, b"/usr/bin/other")
        assert other.stats().titles_missing == 1 and other.stats().titles_proc == 0
    finally:
        child.kill()
        child.wait()
    gone = unmarked()
    assert "title" not in _failed_exec_of(gone, 73, child.pid, exe)
    assert "title" not in _failed_exec_of(gone, 74, child.pid, exe)  # known to have none
    assert gone.stats().titles_missing == 2 and gone.stats().titles_proc == 0
    # An exec of that pid (reused) teaches its title all the same.
    feed(gone, *an_exec(75, child.pid, exe, [b"again"], ms=200))
    gone.drain_end(17_500)
    gone.drain_end(17_550)
    assert _failed_exec_of(gone, 76, child.pid, exe)["title"] == ["again"]
    assert gone.stats().titles_cached == 1


def test_memory_bound_covers_the_title_cache() -> None:
    d = NetlinkDecoder()
    before = d.stats().parser
    d.unmarked()
    after = d.stats().parser
    grown = after.memory_bound - before.memory_bound
    assert 256 * 128 <= grown <= 256 * 200  # 256 slots of 128 bytes and their keys
    assert after.memory - before.memory == grown
    assert after.memory <= after.memory_bound


# ---------------------------------------------------------------------------------------------
# memory over many calls


def test_unmarked_entry_points_keep_rss_flat() -> None:
    from leakcheck import assert_rss_flat

    counter = iter(range(1, 10**9))
    args = [b"sh", b"-c", b"x" * 200]

    def whole_cycle() -> None:  # new, unmarked (the cache allocated), use, close
        d = unmarked()
        feed(d, *an_exec(1, NO_PID, b"/bin/sh", args))
        d.drain_end(1000)
        d.drain_end(1100)
        feed(d, *a_failed_exec(2, NO_PID, b"/bin/sh"), *a_failed_exec(3, NO_PID, b"/bin/x"))
        d.drain_end(1200)
        d.drain_end(1300)
        feed(d, record(CWD, 2, 'cwd="/"'))  # late
        d.flush()
        d.stats()
        d.close()

    assert_rss_flat(whole_cycle, calls=3000, name="am_audit_nl_unmarked/drain_end (new..free)")

    long_lived = unmarked()

    def one_drain() -> None:  # events, titles (cached and /proc misses), late records
        n = next(counter)
        serial, clock = 3 * n, 100 * n
        feed(long_lived, *an_exec(serial, 1000 + n % 5000, b"/bin/sh", args),
             *a_failed_exec(serial + 1, 1000 + n % 5000, b"/bin/sh"),
             *a_failed_exec(serial + 2, NO_PID, b"/bin/y"), record(CWD, serial - 3, 'cwd="/"'))
        long_lived.drain_end(clock)
        long_lived.drain_end(clock + 50)

    assert_rss_flat(one_drain, name="am_audit_nl_drain_end on a long-lived parser")
    stats = long_lived.stats()
    assert stats.late_records > 0 and stats.titles_learnt > 0 and stats.titles_missing > 0


# ---------------------------------------------------------------------------------------------
# the recorded device log without its end marks


def _datagrams_of(log: bytes, drop: set[int]) -> list[bytes]:
    """Each record of the log as the kernel's datagram (unicast framing), those of the types
    in drop left out."""
    out = []
    for line in log.splitlines():
        if not line.startswith(b"type="):
            continue
        name, rest = line[5:].split(b" ", 1)
        number = record_type_number(name.decode())
        assert number is not None, name
        if number in drop:
            continue
        payload = rest.removeprefix(b"msg=")
        out.append(HEADER.pack(len(payload), number, 0, 0, 0) + payload)
    return out


def _comparable(event: dict[str, Any]) -> dict[str, Any]:
    event = dict(event)
    event.pop("title", None)
    if "recs" in event:  # an `audit` event lists its records: PROCTITLE is not among them now
        event["recs"] = [r for r in event["recs"] if r["type"] != "PROCTITLE"]
    return event


def test_the_device_log_without_eoe_and_proctitle_gives_the_same_events(
    corpus_dir: Path,
) -> None:
    """The recorded device log (every record kind of the corpus) in unmarked mode, its EOE and
    PROCTITLE records left out and a drain end after every 7 records: the same events as the
    log parsed as it is, but `title`, none late, none forced, none timed out (the log pauses
    for seconds between its steps: stream time jumps); every title the cache gave
    a failed exec is the one the kernel's PROCTITLE said."""
    log = (corpus_dir / "device-raw.log").read_bytes()
    marked = NetlinkDecoder()
    whole = events_of([b for d in _datagrams_of(log, set()) for b in marked.feed(d)]
                      + marked.flush())
    d = unmarked()
    batches: list[bytes] = []
    clock = 1000
    for i, datagram in enumerate(_datagrams_of(log, {EOE, PROCTITLE}), 1):
        batches += d.feed(datagram)
        if i % 7 == 0:
            clock += 60
            batches += d.drain_end(clock)
    batches += d.drain_end(clock + 60) + d.drain_end(clock + 120)
    stats = d.stats()
    assert stats.parser.events == len(whole)  # all complete before any flush
    unmarked_events = events_of(batches + d.flush())
    def key(e: dict[str, Any]) -> tuple[int, str]:
        return e["sn"], e["t"]

    assert sorted(map(_comparable, unmarked_events), key=key) == sorted(
        map(_comparable, whole), key=key)
    assert stats.late_records == 0 and stats.parser.timeouts == 0
    assert stats.parser.forced == 0 and stats.titles_learnt > 0
    by_sn = {e["sn"]: e for e in whole}
    titled = [e for e in unmarked_events if "title" in e]
    failed_execs = [e for e in whole if e["t"] == "exec" and "argv" not in e]
    assert failed_execs and len(titled) <= len(failed_execs)
    for event in titled:
        assert event["title"] == by_sn[event["sn"]]["title"], event


def test_an_event_whose_records_carry_an_old_entry_time_waits_for_its_drain_end() -> None:
    """A blocking accept's records carry the time it was entered: seconds behind the records
    around them. In unmarked mode neither stream time nor expire() completes it early."""
    d = unmarked()
    feed(d, record(SYSCALL, 90, exec_syscall(60, b"/bin/a"), ms=900))
    accept = ("arch=c000003e syscall=43 success=yes exit=4 a0=3 a1=4 a2=5 a3=0 items=0 ppid=1 "
              'pid=61 auid=0 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) '
              'ses=1 comm="srv" exe="/usr/bin/srv" key="iot-micro-agent"')
    old = record(SYSCALL, 91, accept).replace(b"1717171717.", b"1717171707.")  # 10 s earlier
    later = record(SYSCALL, 92, exec_syscall(62, b"/bin/c")).replace(b"1717171717.",
                                                                     b"1717171719.")
    feed(d, old, later)
    assert events_of(d._parser.expire(1717171730_000) + d._parser.seal()) == []
    d.drain_end(1000)  # the accept's SOCKADDR comes in the next drain
    feed(d, record(SOCKADDR, 91, SOCKADDR_V4))
    assert sorted(e["sn"] for e in events_of(d.drain_end(1100))) == [90, 92]
    (done,) = events_of(d.drain_end(1200))
    assert done["sn"] == 91 and done["raddr"] == "192.168.0.1" and done["dir"] == "in"
    assert d.stats().parser.timeouts == 0 and d.stats().late_records == 0
