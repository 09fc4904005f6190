"""The live audit source (agent.native.audit_netlink) on the real kernel, as root.

Every test leaves the kernel's audit state as it found it: the `kernel_audit` fixture records
enabled, pid, backlog_limit and the rule list first, and afterwards (whatever happened)
removes rules that were not there, puts enabled and backlog_limit back, gives up an ownership
this process kept, and then checks that the state is the one it recorded. auditd is started
only by the test that needs it and always stopped.

Needs: root (CAP_AUDIT_CONTROL, CAP_AUDIT_READ), the Debian package auditd (auditctl, auditd).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import skip_unless_ci
from kernel_audit import (
    EXCLUSION_RULE,
    EXCLUSION_RULES,
    PATH_EXCLUSION_RULE,
    PROCTITLE_EXCLUSION_RULE,
    multicast_reader,
    multicast_readers,
    proctitle_parts,
    release_audit_pid,
)

from agent.native import audit_netlink
from agent.native._base import CoreClosedError
from agent.native.audit_netlink import AuditNetlink, AuditNetlinkOptions, NetlinkDecoder
from agent.native.sink import EventSink, SinkOptions, pump

pytestmark = [pytest.mark.live, pytest.mark.root]
KEY = audit_netlink.RULE_KEY

Event = dict[str, Any]



# ---------------------------------------------------------------------------------------------
# the kernel's audit state, through auditctl (the tool an administrator would believe)


def _need_root_tools() -> None:
    if os.geteuid() != 0:
        skip_unless_ci("the live audit tests need root (CAP_AUDIT_CONTROL, CAP_AUDIT_READ)")
    if shutil.which("auditctl") is None:
        skip_unless_ci("auditctl is not installed (Debian package auditd)")


def auditctl(*args: str, check: bool = True) -> str:
    run = subprocess.run(["auditctl", *args], capture_output=True, text=True, check=False)
    if check and run.returncode != 0:
        raise AssertionError(f"auditctl {' '.join(args)} failed: {run.stderr.strip()}")
    return run.stdout


def audit_status() -> dict[str, int]:
    status: dict[str, int] = {}
    for line in auditctl("-s").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            status[parts[0]] = int(parts[1])
    return status


def audit_rules() -> list[str]:
    out = auditctl("-l")
    return [line for line in out.splitlines() if line.startswith("-")]


def our_rules() -> list[str]:
    """The agent's rules: those with its key, and its exclusion of unread record types."""
    return [rule for rule in audit_rules()
            if f"key={KEY}" in rule.split() or rule in EXCLUSION_RULES]


@dataclass(frozen=True)
class AuditState:
    enabled: int
    pid: int
    backlog_limit: int
    rules: tuple[str, ...]


def snapshot() -> AuditState:
    status = audit_status()
    return AuditState(
        status["enabled"], status["pid"], status["backlog_limit"], tuple(sorted(audit_rules()))
    )


def restore(before: AuditState) -> None:
    for rule in audit_rules():
        if rule not in before.rules and rule.startswith("-a "):
            auditctl("-d", *rule[3:].split(), check=False)
    status = audit_status()
    if status["pid"] == os.getpid() and before.pid != os.getpid():
        release_audit_pid()
    if status["enabled"] != before.enabled and before.enabled in (0, 1):
        auditctl("-e", str(before.enabled), check=False)
    if status["backlog_limit"] != before.backlog_limit:
        auditctl("-b", str(before.backlog_limit), check=False)


@pytest.fixture
def kernel_audit() -> Iterator[AuditState]:
    """The audit state before the test; restored and compared after it."""
    _need_root_tools()
    before = snapshot()
    if before.enabled == 2:
        skip_unless_ci("audit is locked (enabled 2) on this machine: nothing can be restored")
    yield before
    restore(before)
    after = snapshot()
    assert after == before, f"the kernel audit state changed: {before} -> {after}"


# ---------------------------------------------------------------------------------------------
# reading events


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def decode(batches: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for batch in batches:
        decoded = msgpack.unpackb(batch, raw=False)
        assert isinstance(decoded, list)
        events += decoded
    return events


def collect(
    source: Any,
    done: Callable[[list[Event]], bool],
    timeout: float,
    events: list[Event] | None = None,
) -> list[Event]:
    """Select on the source, drain, expire and seal until done(events) or timeout."""
    events = [] if events is None else events
    deadline = time.monotonic() + timeout
    sink = EventSink()
    while True:
        select.select([source.fileno()], [], [], 0.05)
        batches: list[bytes] = []
        pump(source.drain, sink, batches.extend)
        pump(lambda s: source.expire(s, now_ms()), sink, batches.extend, seal=True)
        events += decode(batches)
        if done(events) or time.monotonic() > deadline:
            return events


def exec_with(events: list[Event], token: str) -> list[Event]:
    return [e for e in events if e.get("t") == "exec" and token in e.get("argv", [])]


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------------
# exec


def test_exec_event_exact_argv_uid_ppid_exe_within_a_second(kernel_audit: AuditState) -> None:
    token = f"unique-token-{uuid.uuid4()}"
    with AuditNetlink() as source:
        assert source.mode in ("owner", "multicast"), source.state
        assert source.stats().rules_installed >= 2, source.rules_report
        argv = ["/bin/echo", token, "space arg", "tab\targ", "ünï"]
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        child.wait()
        exited = time.monotonic()
        events = collect(source, lambda ev: bool(exec_with(ev, token)), timeout=5)
        latency = time.monotonic() - exited
        found = exec_with(events, token)
        assert len(found) == 1, f"{len(found)} exec events with {token}"
        event = found[0]
        assert event["argv"] == argv
        assert event["argc"] == len(argv)
        assert event["pid"] == child.pid
        assert event["ppid"] == os.getpid()
        assert event["uid"] == os.getuid() and event["euid"] == os.geteuid()
        assert event["exe"] == os.path.realpath("/bin/echo")
        assert event["sc"] == "execve" and event["ok"] is True
        assert event["key"] == KEY
        assert event["cwd"] == os.getcwd()
        # The event reaches a batch while the child's exit is fresh: no wait for a timeout
        # or for a batch to fill (the kernel's EOE completes it).
        assert latency < 1.0, f"the exec event came {latency:.2f} s after the child exited"
        stats = source.stats()
        assert stats.records > 0 and stats.malformed == 0 and stats.parser.malformed == 0


def test_thousand_processes_all_seen_or_loss_accounted(kernel_audit: AuditState) -> None:
    count = 1000
    run = uuid.uuid4().hex[:12]
    tokens = {f"n-{run}-{i}" for i in range(count)}
    with AuditNetlink() as source:
        assert source.mode in ("owner", "multicast"), source.state
        errors: list[BaseException] = []

        def spawn_all() -> None:
            try:
                pids = [
                    os.posix_spawn("/bin/true", ["/bin/true", f"n-{run}-{i}"], os.environ)
                    for i in range(count)
                ]
                for pid in pids:
                    os.waitpid(pid, 0)
            except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
                errors.append(exc)

        spawner = threading.Thread(target=spawn_all)
        spawner.start()
        seen: dict[str, int] = {}

        def all_seen(events: list[Event]) -> bool:
            for event in events[all_seen.checked :]:  # type: ignore[attr-defined]
                if event.get("t") == "exec":
                    argv = [text(a) for a in event.get("argv", [])]
                    if len(argv) == 2 and argv[1] in tokens:
                        seen[argv[1]] = seen.get(argv[1], 0) + 1
            all_seen.checked = len(events)  # type: ignore[attr-defined]
            return len(seen) == count and not spawner.is_alive()

        all_seen.checked = 0  # type: ignore[attr-defined]
        collect(source, all_seen, timeout=60)
        spawner.join()
        assert not errors, errors
        # A last poll brings the kernel's lost counter up to date; then the stream is quiet.
        collect(source, all_seen, timeout=1.0)
        source.poll_status()
        stats = source.stats()
    shortfall = count - len(seen)
    assert all(n == 1 for n in seen.values()), "an exec event came twice"
    assert stats.parser.duplicates == 0
    if stats.loss == 0:
        assert shortfall == 0, f"{shortfall} of {count} execs missing and no loss reported"
    else:
        # Loss is reported in the kernel's unit (records) and the parser's (serials): every
        # missing exec must be covered by it.
        assert 0 < shortfall <= stats.kernel_lost_delta + stats.parser.gaps + (
            count if stats.enobufs else 0
        ), f"shortfall {shortfall}, loss {stats}"


NETLINK_AUDIT = 9  # linux/netlink.h


def event_portid(source: AuditNetlink) -> int:
    """The netlink port id of the source's event socket."""
    with socket.socket(fileno=os.dup(source.fileno())) as s:
        return int(s.getsockname()[0])


def forged_exec(serial: int, token: str) -> list[bytes]:
    """The datagrams of an exec event as the kernel frames them (unicast), argv holding token."""
    s = STAMP % serial
    records = [
        (1300, s + b'arch=c000003e syscall=59 success=yes exit=0 ppid=1 pid=77 uid=0 gid=0 '
         b'euid=0 comm="true" exe="/usr/bin/true" key="iot-micro-agent"'),
        (1309, s + b'argc=2 a0="/bin/true" a1="' + token.encode() + b'"'),
        (1320, s),
    ]
    return [unicast(rtype, payload) for rtype, payload in records]


@pytest.mark.parametrize("exclude_proctitle", [False, True])
def test_many_datagrams_per_call_keep_every_count_exact_and_resume_losslessly(
    kernel_audit: AuditState, exclude_proctitle: bool,
) -> None:
    """Hundreds of records queued before one drain: the event socket is read many datagrams
    per system call (recvmmsg). Records forged by a user-space socket among them are dropped
    and counted one by one; a sink that fills in the middle of a call's datagrams makes the
    next call resume there, and nothing is lost or decoded twice. With PROCTITLE excluded
    (as owner) no record completes an event inside a drain: the events complete at drain
    ends, beyond the sink's max_batches (the parser's burst), each once."""
    count = 200
    run = uuid.uuid4().hex[:12]
    tokens = {f"m-{run}-{i}" for i in range(count)}
    forged_token = f"forged-{run}"
    with AuditNetlink(AuditNetlinkOptions(exclude_proctitle=exclude_proctitle)) as source, \
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT) as forger:
        assert source.mode in ("owner", "multicast"), source.state
        unmarked = source.stats().proctitle_excluded == 1
        if exclude_proctitle and not unmarked:
            skip_unless_ci(f"PROCTITLE not excluded here: {source.rules_report}")
        forger.bind((0, 0))
        portid = event_portid(source)
        before = source.stats()
        forged = 0
        for i in range(count):
            pid = os.posix_spawn("/bin/true", ["/bin/true", f"m-{run}-{i}"], os.environ)
            os.waitpid(pid, 0)
            if i % 20 == 0:
                for datagram in forged_exec(900_000 + i, forged_token):
                    forger.sendto(datagram, (portid, 0))
                    forged += 1
        time.sleep(0.5)  # the last records reach the socket; nothing was read so far
        # Small enough to fill every few events, inside the datagrams of one recvmmsg.
        sink = EventSink(SinkOptions(batch_bytes=4096, max_batches=1))
        events: list[Event] = []
        seen: dict[str, int] = {}
        deadline = time.monotonic() + 20
        while len(seen) < count and time.monotonic() < deadline:
            batches: list[bytes] = []
            pump(source.drain, sink, batches.extend)
            pump(lambda s: source.expire(s, now_ms()), sink, batches.extend, seal=True)
            for event in decode(batches):
                events.append(event)
                argv = [text(a) for a in event.get("argv", [])] if event.get("t") == "exec" else []
                if len(argv) == 2 and argv[1] in tokens:
                    seen[argv[1]] = seen.get(argv[1], 0) + 1
            select.select([source.fileno()], [], [], 0.05)
        source.poll_status()
        after = source.stats()

    def grew(name: str) -> int:
        return int(getattr(after, name)) - int(getattr(before, name))

    assert not [e for e in events if forged_token in map(text, e.get("argv", []))], \
        "a forged record became an event"
    assert grew("foreign") == forged
    # Each datagram from the kernel holds one message: every one received was decoded.
    assert grew("datagrams") == grew("messages") + grew("foreign")
    assert grew("malformed") == 0 and grew("truncated") == 0 and grew("recv_errors") == 0
    if unmarked:
        assert grew("unmarked_completed") >= len(seen) and grew("late_records") == 0
    else:
        assert grew("parser_full") >= 1, "the sink never filled: the resume was not exercised"
    # Batched: at least 8 datagrams per system call on average (up to 32 are taken at once).
    assert grew("recv_calls") * 8 <= grew("datagrams"), after
    assert all(n == 1 for n in seen.values()), "an exec event came twice"
    assert after.parser.duplicates == 0
    if after.loss == 0:
        assert len(seen) == count, f"{count - len(seen)} of {count} execs missing, no loss"
    else:
        assert count - len(seen) <= after.kernel_lost_delta + after.parser.gaps + (
            count if after.enobufs else 0
        ), f"shortfall {count - len(seen)}, loss {after}"


# ---------------------------------------------------------------------------------------------
# network

NET_CHILD = textwrap.dedent(
    """
    import json, socket, sys

    def free_port(family, kind, host):
        with socket.socket(family, kind) as s:
            s.bind((host, 0))
            return s.getsockname()[1]

    out = {}
    for name, family, host in (("v4", socket.AF_INET, "127.0.0.1"),
                               ("v6", socket.AF_INET6, "::1")):
        port = free_port(family, socket.SOCK_STREAM, host)
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind((host, port))
        listener.listen(1)
        client = socket.socket(family, socket.SOCK_STREAM)
        client.connect((host, port))
        conn, peer = listener.accept()
        out[name + "_tcp"] = {"port": port, "client_port": client.getsockname()[1]}
        for s in (conn, client, listener):
            s.close()
        uport = free_port(family, socket.SOCK_DGRAM, host)
        server = socket.socket(family, socket.SOCK_DGRAM)
        server.bind((host, uport))
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.connect((host, uport))
        udp.send(b"x")
        server.recv(1)
        out[name + "_udp"] = {"port": uport}
        server.close()
        udp.close()
    print(json.dumps(out))
    """
)


def test_tcp_and_udp_connect_accept_bind_events(kernel_audit: AuditState) -> None:
    with AuditNetlink() as source:
        assert source.mode in ("owner", "multicast"), source.state
        # A child process, so that ppid and pid tell its events apart from ours.
        child = subprocess.run(
            [sys.executable, "-c", NET_CHILD], capture_output=True, text=True, check=True
        )
        ports = json.loads(child.stdout)
        events: list[Event] = []

        def nets(ev: list[Event]) -> list[Event]:
            return [e for e in ev if e.get("t") == "net" and e.get("comm", "").startswith("python")]

        exe = os.path.realpath(sys.executable)

        def find(ev: list[Event], **keys: Any) -> list[Event]:
            return [e for e in nets(ev) if all(e.get(k) == v for k, v in keys.items())]

        wanted: list[dict[str, Any]] = []
        for name, host, fam in (("v4", "127.0.0.1", "inet"), ("v6", "::1", "inet6")):
            tcp, udp = ports[name + "_tcp"], ports[name + "_udp"]
            wanted += [
                {"dir": "bind", "fam": fam, "laddr": host, "lport": tcp["port"]},
                {"dir": "out", "fam": fam, "raddr": host, "rport": tcp["port"]},
                {"dir": "in", "fam": fam, "raddr": host, "rport": tcp["client_port"]},
                {"dir": "bind", "fam": fam, "laddr": host, "lport": udp["port"]},
                {"dir": "out", "fam": fam, "raddr": host, "rport": udp["port"]},
            ]
        collect(source, lambda ev: all(find(ev, **w) for w in wanted), timeout=5, events=events)
        for want in wanted:
            found = find(events, **want)
            assert found, f"no net event {want}; got {nets(events)}"
            event = found[0]
            assert event["exe"] == exe
            assert event["ppid"] == os.getpid()
            assert event["sc"] in ("connect", "accept", "accept4", "bind")
            assert event["key"] == KEY
        pids = {e["pid"] for w in wanted for e in find(events, **w)}
        assert len(pids) == 1, f"the net events name several processes: {pids}"


# ---------------------------------------------------------------------------------------------
# owner mode: what open changes, what close gives back, stale rules


def test_owner_mode_restores_state_and_removes_only_stale_rules(kernel_audit: AuditState) -> None:
    if kernel_audit.pid != 0:
        skip_unless_ci(f"audit is owned by pid {kernel_audit.pid}: owner mode cannot be tested")
    # A rule with our key left by a killed previous run, and a rule of someone else.
    stale = ["-a", "always,exit", "-F", "arch=b64", "-S", "unlinkat", "-k", KEY]
    other = ["-a", "always,exit", "-F", "arch=b64", "-S", "unlinkat", "-k", "someone-else"]
    auditctl(*stale)
    auditctl(*other)
    assert len(our_rules()) == 1
    source = AuditNetlink(AuditNetlinkOptions(backlog_limit=kernel_audit.backlog_limit + 4096))
    try:
        assert source.mode == "owner" and source.state == "owner"
        stats = source.stats()
        assert stats.stale_rules_removed == 1
        assert stats.rules_failed == 0, source.rules_report
        status = audit_status()
        assert status["pid"] == os.getpid()
        assert status["enabled"] == 1
        assert status["backlog_limit"] == kernel_audit.backlog_limit + 4096
        rules = audit_rules()
        assert any("key=someone-else" in r for r in rules)
        assert not any("unlinkat" in r and f"key={KEY}" in r for r in rules)
        assert len(our_rules()) == stats.rules_installed
        found = source.found_status
        assert found is not None and found.pid == 0
        assert found.backlog_limit == kernel_audit.backlog_limit
    finally:
        pump(source.finish, EventSink(), lambda batches: None)
        finished = source.stats()
        source.close()
    source.close()
    assert source.closed
    assert finished.rules_removed == stats.rules_installed
    status = audit_status()
    assert status["enabled"] == kernel_audit.enabled
    assert status["backlog_limit"] == kernel_audit.backlog_limit
    assert status["pid"] == kernel_audit.pid
    assert our_rules() == []
    assert any("key=someone-else" in r for r in audit_rules())
    auditctl("-d", *other[1:])


def poll_after_reading(source: AuditNetlink) -> object:
    """A status poll after the records waiting on the socket were read, as the agent's loop
    does (a CONFIG_CHANGE among them makes the poll list the kernel's rules)."""
    pump(source.drain, EventSink(), lambda batches: None, seal=True)
    return source.poll_status()


def test_agent_polls_the_audit_status_when_due(kernel_audit: AuditState, tmp_path: Path) -> None:
    """The agent's audit source asks AUDIT_GET at its first tick, then every 5 s while idle
    (each costs the kernel a thread), and at once after a tick that came late, after a
    CONFIG_CHANGE record, and while a drain's rate could fill the socket within 5 s."""
    if kernel_audit.pid != 0:
        skip_unless_ci(f"audit is owned by pid {kernel_audit.pid}: owner mode cannot be tested")
    from agent.collectors.audit_source import STATUS_POLL_MS, AuditSource
    from agent.collectors.base import Environment

    source = AuditSource(Environment(data_dir=tmp_path))
    with AuditNetlink(AuditNetlinkOptions(exec_rules=True, net_rules=False)) as nl:
        source.nl = nl

        def polls() -> int:
            return int(nl.stats().status_polls)

        def read_waiting() -> None:  # what the loop's turn does when the socket is readable
            pump(nl.drain, EventSink(), lambda batches: None, seal=True)

        read_waiting()  # our own rules' CONFIG_CHANGE records
        now = 1_000_000
        source.tick(now)
        assert polls() == 1  # the first tick
        while polls() == 1 and nl.stats().config_changes > source._changes_polled:
            now += 1000  # own records that came after the first poll
            source.tick(now)
        start, first = now, polls()
        for _ in range(STATUS_POLL_MS // 1000 - 1):
            now += 1000
            source.tick(now)
        assert polls() == first, "idle: no poll within 5 s"
        now += 1000
        source.tick(now)
        assert polls() == first + 1 and now - start == STATUS_POLL_MS
        now += 3000  # a late tick: the agent was stopped
        source.tick(now)
        assert polls() == first + 2
        auditctl("-a", "always,exit", "-F", "arch=b64", "-S", "unlinkat", "-k", "someone-else")
        deadline = time.monotonic() + 5
        changes = source._changes_polled
        while nl.stats().config_changes == changes and time.monotonic() < deadline:
            read_waiting()
            time.sleep(0.05)
        assert nl.stats().config_changes > changes, "the rule's CONFIG_CHANGE record"
        now += 1000
        source.tick(now)
        assert polls() == first + 3, "a CONFIG_CHANGE record: polled at the next tick"
        auditctl("-d", "always,exit", "-F", "arch=b64", "-S", "unlinkat", "-k", "someone-else")
        read_waiting()
        now += 1000
        source.tick(now)
        polled = polls()
        # A drain whose rate would fill the socket within 5 s: 50 execs in 10 ms, and room
        # for 100 (events_buffered): polled at every tick.
        source._capacity = 100
        tag = f"poll-{uuid.uuid4()}"
        for _ in range(2):
            for i in range(50):
                subprocess.run(["/bin/true", tag, str(i)], check=True)
            time.sleep(0.2)
            source._last_drain = time.monotonic() - 0.01
            source.on_readable()
            now += 1000
            source.tick(now)
            polled += 1
            assert polls() == polled, "busy: polled every second"
        now += 1000
        source.tick(now)
        assert polls() == polled, "no drain since the last poll: idle again"
    source.nl = None


def test_owner_puts_back_rules_deleted_and_audit_disabled_by_another_process(
        kernel_audit: AuditState) -> None:
    """`auditctl -D` and `auditctl -e 0` under a running owner (an intruder blinding the agent,
    or an operator's cleanup): the kernel logs each change to its reader as a CONFIG_CHANGE
    record, and the first status poll after it puts the rules and `enabled` back, counts it,
    and events arrive again. Without such a record every 2nd poll lists the rules."""
    if kernel_audit.pid != 0:
        skip_unless_ci(f"audit is owned by pid {kernel_audit.pid}: owner mode cannot be tested")
    other = ["-a", "always,exit", "-F", "arch=b64", "-S", "unlinkat", "-k", "someone-else"]
    with AuditNetlink() as source:
        assert source.mode == "owner", source.state
        installed = source.stats().rules_installed
        # Our own set-up is logged too: one record per rule added (audit is on by then). kauditd
        # sends them after the syscalls returned, late on a busy machine (CI once read 1 of
        # them at the first drain), so they are read until all have come.
        deadline = time.monotonic() + 5
        while source.stats().config_changes < installed and time.monotonic() < deadline:
            pump(source.drain, EventSink(), lambda batches: None, seal=True)
            time.sleep(0.05)
        assert poll_after_reading(source) is not None
        assert source.stats().config_changes >= installed, "our own rules' records"
        assert source.stats().rules_lost == 0 and source.stats().rule_checks == 1
        source.poll_status()  # no CONFIG_CHANGE since: the rules are not listed ...
        assert source.stats().rule_checks == 1
        source.poll_status()  # ... but at every 2nd poll
        assert source.stats().rule_checks == 2
        auditctl("-D")
        auditctl(*other)  # someone else's rule, added after: it stays
        assert our_rules() == []
        poll_after_reading(source)
        stats = source.stats()
        assert stats.rules_lost == installed and stats.rules_readded == installed
        assert stats.rules_readd_failed == 0
        assert len(our_rules()) == installed
        assert any("key=someone-else" in r for r in audit_rules())
        # Only some of them gone: the set is made whole without doubling the rest.
        auditctl("-d", *our_rules()[0][3:].split())
        poll_after_reading(source)
        assert source.stats().rules_lost == installed + 1
        assert len(our_rules()) == installed
        auditctl("-e", "0")
        poll_after_reading(source)
        stats = source.stats()
        assert stats.disabled_by_others == 1 and stats.reenabled == 1
        assert audit_status()["enabled"] == 1
        # A second agent beside the first (multicast): it shares the rules, and neither its
        # open nor its close removes them (it took the first one's for a killed run's).
        with AuditNetlink() as second:
            assert second.mode == "multicast", second.state
            # The exclusions are the owner's alone (a multicast reader never installs one).
            st = source.stats()
            excluded = st.unread_excluded + st.path_excluded + st.proctitle_excluded
            assert second.stats().rules_shared == installed - excluded
            assert second.stats().stale_rules_removed == 0
            assert len(our_rules()) == installed
            pump(second.finish, EventSink(), lambda batches: None)
        assert len(our_rules()) == installed
        source.poll_status()
        assert source.stats().rules_lost == installed + 1
        token = f"after-the-tampering-{uuid.uuid4()}"
        subprocess.run(["/bin/echo", token], stdout=subprocess.DEVNULL, check=True)
        assert exec_with(collect(source, lambda ev: bool(exec_with(ev, token)), timeout=5), token)
        pump(source.finish, EventSink(), lambda batches: None)
    assert our_rules() == []
    auditctl("-d", *other[1:])


def test_options_select_rules(kernel_audit: AuditState) -> None:
    with AuditNetlink(AuditNetlinkOptions(net_rules=False, compat_arch=False,
                                          exclude_unread=False, exclude_path=False)) as source:
        rules = our_rules()
        assert len(rules) == source.stats().rules_installed == 1
        assert "arch=b64" in rules[0] and "execve" in rules[0] and "connect" not in rules[0]
    with AuditNetlink(AuditNetlinkOptions(exec_rules=False, exclude_unread=False,
                                          exclude_path=False)) as source:
        rules = our_rules()
        assert rules and not any("execve" in r for r in rules)
        assert any("connect" in r for r in rules)
        # i386 has no accept(2) of its own: skipped and counted, reached through socketcall.
        assert source.stats().rules_skipped == 1
        assert "i386 has no accept" in source.rules_report
        assert any("socketcall" in r and "a0=0x5" in r for r in rules)
    assert our_rules() == []


def _record_types_of(reader: socket.socket, token: str) -> list[int]:
    """The record types, in order, of the event whose EXECVE record names token, as the
    multicast group delivered them (read until the group is quiet for 0.5 s)."""
    reader.settimeout(0.5)
    records: list[tuple[int, str]] = []
    try:
        while True:
            datagram = reader.recv(65536)
            (kind,) = struct.unpack_from("=H", datagram, 4)
            records.append((kind, datagram[16:].split(b"\0")[0].decode("ascii", "replace")))
    except TimeoutError:
        pass
    hexed = token.encode().hex().upper()
    serials = {text.split(":", 1)[1].split(")", 1)[0] for kind, text in records
               if kind == 1309 and (token in text or hexed in text.upper())}
    assert len(serials) == 1, f"{len(serials)} events name {token}"
    serial = serials.pop()
    return [kind for kind, text in records if f":{serial})" in text]


def _exec_seen(source: AuditNetlink, token: str) -> tuple[Event, list[int], float]:
    """Runs /bin/echo token x; its event, the record types a multicast reader that joined
    after open saw for it, and how long after the exit the event was in a batch."""
    with multicast_reader() as reader:
        child = subprocess.Popen(["/bin/echo", token, "x"], stdout=subprocess.DEVNULL)
        child.wait()
        exited = time.monotonic()
        events = collect(source, lambda ev: bool(exec_with(ev, token)), timeout=5)
        latency = time.monotonic() - exited
        types = _record_types_of(reader, token)
    found = exec_with(events, token)
    assert len(found) == 1, f"{len(found)} exec events with {token}"
    assert found[0]["argv"] == ["/bin/echo", token, "x"]
    assert found[0]["cwd"] == os.getcwd()
    return found[0], types, latency


def test_owner_excludes_the_record_types_no_event_reads(kernel_audit: AuditState) -> None:
    """As owner, with no other reader, the kernel never sends EOE nor BPRM_FCAPS, nor PATH
    while no watch rule wants it, nor PROCTITLE (three exclude rules): a reader that joins the
    group afterwards sees the exec's other records, the event still completes within a second
    (at a drain end, no timeout) with every key but `paths`; a watch path brings PATH back at
    once, and close removes the rules. With a reader in the group before open, nothing is
    excluded."""
    if kernel_audit.pid != 0:
        skip_unless_ci(f"audit is owned by pid {kernel_audit.pid}: owner mode cannot be tested")
    if multicast_readers() == 0:
        _owner_excludes_and_watches_bring_path_back()
    # Another reader of the group (journald's audit socket, say) may want every record.
    with multicast_reader(), AuditNetlink() as source:
        assert source.mode == "owner", source.state
        stats = source.stats()
        assert stats.unread_excluded == stats.path_excluded == stats.proctitle_excluded == 0
        assert stats.unread_kept == 1
        assert "every record type kept:" in source.rules_report
        assert "other reader(s) of the audit multicast group" in source.rules_report
        assert source.state == ("owner; every record type asked for: another reader of the "
                                "audit multicast group")
        assert not set(EXCLUSION_RULES) & set(audit_rules())
        assert len(our_rules()) == stats.rules_installed


def _owner_excludes_and_watches_bring_path_back() -> None:
    with AuditNetlink() as source:
        assert source.mode == "owner", source.state
        stats = source.stats()
        assert stats.unread_excluded == 1 and stats.unread_kept == 0, source.rules_report
        assert stats.path_excluded == 1, source.rules_report
        assert stats.proctitle_excluded == 1, source.rules_report
        assert "EOE and BPRM_FCAPS excluded" in source.rules_report
        assert "PATH excluded" in source.rules_report
        assert "PROCTITLE excluded" in source.rules_report
        assert EXCLUSION_RULE in audit_rules() and PATH_EXCLUSION_RULE in audit_rules()
        assert PROCTITLE_EXCLUSION_RULE in audit_rules()
        event, types, latency = _exec_seen(source, f"exclusion-{uuid.uuid4()}")
        assert not {1302, 1320, 1321, 1327} & set(types), types
        assert types[0] == 1300 and set(types) == {1300, 1309, 1307}, types
        assert "paths" not in event and latency < 1.0
        after = source.stats()
        assert after.parser.timeouts == stats.parser.timeouts
        assert after.unmarked_completed > stats.unmarked_completed
        # A watch rule's events name their files in PATH records: excluded no more, at once.
        # PROCTITLE too: FileSystem's events wait 300 ms for theirs, which must end in time.
        source.watch(("/tmp",))
        assert source.stats().path_excluded == source.stats().proctitle_excluded == 0
        assert PATH_EXCLUSION_RULE not in audit_rules() and EXCLUSION_RULE in audit_rules()
        assert PROCTITLE_EXCLUSION_RULE not in audit_rules()
        event, types, latency = _exec_seen(source, f"watched-{uuid.uuid4()}")
        assert 1302 in types and 1320 not in types and types[-1] == 1327 and event["paths"]
        assert event["paths"] and latency < 1.0
        source.watch(())
        assert source.stats().path_excluded == 1 and PATH_EXCLUSION_RULE in audit_rules()
        assert source.stats().proctitle_excluded == 1
        assert PROCTITLE_EXCLUSION_RULE in audit_rules()
        assert len(our_rules()) == source.stats().rules_installed - source.stats().rules_removed
        pump(source.finish, EventSink(), lambda batches: None)
        assert source.stats().late_records == 0
    assert not set(EXCLUSION_RULES) & set(audit_rules())
    # Audit_ExecPaths on: PATH records and `paths` as before.
    with AuditNetlink(AuditNetlinkOptions(exclude_path=False)) as source:
        assert source.stats().path_excluded == 0 and source.stats().unread_excluded == 1
        event, types, _ = _exec_seen(source, f"with-paths-{uuid.uuid4()}")
        assert 1302 in types and 1320 not in types and event["paths"]


# A child that fails to exec a program that is not there, then connects to its own listener,
# then accepts a connection it waits 2.5 s for (a record time-stamped at the accept's entry).
FAILING_CHILD = textwrap.dedent("""
    import os, socket, sys, threading, time
    try:
        os.execv("/nonexistent/" + sys.argv[1], ["x"])
    except OSError:
        pass
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = server.getsockname()
        socket.create_connection(address).close()
        server.accept()[0].close()
        def late():
            time.sleep(2.5)
            socket.create_connection(address).close()
        threading.Thread(target=late).start()
        server.accept()[0].close()
        print(address[1])
""")
# Started before the source opens (its exec is not seen), fails an exec when told to, and
# runs on until told to end (a process gone by the time its event completes has no title).
WAITING_CHILD = textwrap.dedent("""
    import os, sys
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        os.execv("/nonexistent/" + sys.argv[1], ["x"])
    except OSError:
        print("failed", flush=True)
    sys.stdin.readline()
""")


def as_proctitle(argv: list[str] | list[bytes]) -> list[str]:
    """What the kernel's PROCTITLE of a process with this command line says, as `title`."""
    return [p.decode() for p in proctitle_parts([a if isinstance(a, bytes) else a.encode()
                                                 for a in argv])]


def _failed_exec_and_connect(
    source: AuditNetlink,
) -> tuple[Event, Event, Event, list[Event], float]:
    """Runs FAILING_CHILD: its exec event, its failed exec's, its connect's, its two accepts'
    (the second waited 2.5 s), and how long after its exit the last of them was in a batch."""
    token = f"no-such-program-{uuid.uuid4()}"
    argv = [sys.executable, "-c", FAILING_CHILD, token]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=10)
    exited = time.monotonic()
    port = int(out)

    def mine(ev: list[Event], **keys: Any) -> list[Event]:
        return [e for e in ev if e.get("pid") == child.pid
                and all(e.get(k) == v for k, v in keys.items())]

    def done(ev: list[Event]) -> bool:
        return bool(mine(ev, t="exec", ok=True) and mine(ev, t="exec", ok=False)
                    and mine(ev, t="net", dir="out", rport=port)
                    and len(mine(ev, t="net", dir="in", sc="accept4")) == 2)

    events = collect(source, done, timeout=5)
    latency = time.monotonic() - exited
    (ran,) = mine(events, t="exec", ok=True)
    (failed,) = mine(events, t="exec", ok=False)
    connect = mine(events, t="net", dir="out", rport=port)[0]  # two: the second's too
    assert ran["argv"] == argv and ran["cwd"] == os.getcwd()
    assert "argv" not in failed and failed["exe"] == os.path.realpath(sys.executable)
    assert connect["raddr"] == "127.0.0.1" and connect["exe"] == failed["exe"]
    accepts = mine(events, t="net", dir="in", sc="accept4")
    assert accepts[0]["raddr"] == "127.0.0.1", accepts
    return ran, failed, connect, accepts, latency


def test_owner_without_proctitle_gives_the_same_titles_and_complete_events(
    kernel_audit: AuditState,
) -> None:
    """As owner with PROCTITLE excluded (the default): the rule is in `auditctl -l` while the
    source runs and gone after close; a failed exec has the title PROCTITLE gives it (the
    same as with exclude_proctitle off), from the exec its process made (cached) or, for a
    process that made none since open (this test), from /proc; the exec and the connect of the
    same child arrive complete within a second, none by timeout, and its accept that waited
    2.5 s (its records stamped with the accept's entry) names its peer in both modes."""
    if kernel_audit.pid != 0:
        skip_unless_ci(f"audit is owned by pid {kernel_audit.pid}: owner mode cannot be tested")
    if multicast_readers() != 0:
        skip_unless_ci("another reader of the audit multicast group: nothing is excluded")
    titles: dict[bool, list[str]] = {}
    for exclude in (True, False):
        token = f"no-such-program-{uuid.uuid4()}"
        waiting = subprocess.Popen([sys.executable, "-c", WAITING_CHILD, token],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert waiting.stdout is not None and waiting.stdin is not None
        assert waiting.stdout.readline() == "ready\n"
        with open(f"/proc/{waiting.pid}/cmdline", "rb") as f:
            waiting_title = as_proctitle(f.read().rstrip(b"\0").split(b"\0"))
        with AuditNetlink(AuditNetlinkOptions(exclude_proctitle=exclude)) as source:
            assert source.mode == "owner", source.state
            assert source.stats().proctitle_excluded == int(exclude), source.rules_report
            assert (PROCTITLE_EXCLUSION_RULE in audit_rules()) == exclude
            ran, failed, connect, accepts, latency = _failed_exec_and_connect(source)
            # The accept whose records carry its entry time, 2.5 s old, keeps its SOCKADDR in
            # both modes: unmarked mode has no timeouts, and a timeout ages an event by when
            # its records came, not by their stamps (docs/audit-parsing.md, step 6).
            assert accepts[1]["raddr"] == "127.0.0.1", accepts
            assert latency < 1.0, f"the events came {latency:.2f} s after the child exited"
            assert connect["sc"] == "connect" and connect["ppid"] == os.getpid()
            titles[exclude] = failed["title"]
            assert failed["title"] == as_proctitle(ran["argv"])
            # A process whose exec came before open: its title from /proc when PROCTITLE is
            # gone (it is still running the exe of the event).
            waiting.stdin.write("go\n")
            waiting.stdin.flush()
            assert waiting.stdout.readline() == "failed\n"
            waiting_pid = waiting.pid

            def failed_of_waiting(ev: list[Event], pid: int = waiting_pid) -> bool:
                return any(e.get("pid") == pid and e.get("t") == "exec" for e in ev)

            late = collect(source, failed_of_waiting, timeout=5)
            (other_failed,) = [e for e in late if e.get("pid") == waiting_pid]
            waiting.communicate("end\n", timeout=5)
            assert other_failed["ok"] is False and other_failed["title"] == waiting_title
            stats = source.stats()
            assert stats.late_records == 0
            assert stats.parser.timeouts == 0 or not exclude
            if exclude:
                assert stats.unmarked_completed >= 3 and stats.titles_learnt >= 1
                assert stats.titles_cached >= 1 and stats.titles_proc >= 1
            else:
                assert stats.unmarked_completed == stats.titles_learnt == 0
            pump(source.finish, EventSink(), lambda batches: None)
        assert PROCTITLE_EXCLUSION_RULE not in audit_rules()
    assert titles[True] == titles[False]


def test_close_at_interpreter_exit_and_on_half_open_objects(kernel_audit: AuditState) -> None:
    # A program that forgets close(): the handle's C destructor (ffi.gc) restores the kernel
    # state at exit.
    script = textwrap.dedent(
        """
        from agent.native.audit_netlink import AuditNetlink
        source = AuditNetlink()
        print(source.mode, source.stats().rules_installed, flush=True)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    mode, installed = run.stdout.split()
    assert mode in ("owner", "multicast") and int(installed) > 0
    assert snapshot() == kernel_audit
    # An object whose __init__ never ran, and one closed twice.
    half = AuditNetlink.__new__(AuditNetlink)
    half.close()
    assert half.closed
    with pytest.raises(CoreClosedError):
        half.fileno()
    source = AuditNetlink()
    source.close()
    source.close()
    assert source.closed and snapshot() == kernel_audit
    for call in (lambda: source.drain(EventSink()), lambda: source.mode, source.stats):
        with pytest.raises(CoreClosedError):
            call()


def test_killed_previous_run_leaves_stale_rules_that_the_next_open_removes(
    kernel_audit: AuditState,
) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from agent.native.audit_netlink import AuditNetlink
        source = AuditNetlink()
        print(source.stats().rules_installed, flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        installed = int(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(our_rules()) == installed > 0
    with AuditNetlink() as source:
        assert source.mode == "owner" or kernel_audit.pid != 0, source.state
        if source.mode == "owner":
            assert source.stats().stale_rules_removed == installed
            assert len(our_rules()) == source.stats().rules_installed
        else:
            # Beside a live owner, rules with our key may be a live agent's: used, not removed.
            assert source.stats().stale_rules_removed == 0
            assert source.stats().rules_shared == installed
    if kernel_audit.pid == 0:
        assert our_rules() == []
    # What the killed run changed besides its rules (enabled, backlog_limit) it could not
    # restore: kernel_audit puts them back (docs/sources/audit-netlink.md says so).


# ---------------------------------------------------------------------------------------------
# with auditd: the multicast group

AUDITD_CONF = """\
local_events = yes
write_logs = yes
log_file = {log}
log_format = RAW
flush = NONE
max_log_file = 8
max_log_file_action = IGNORE
space_left = 2
space_left_action = IGNORE
admin_space_left = 1
admin_space_left_action = IGNORE
disk_full_action = IGNORE
disk_error_action = IGNORE
q_depth = 2000
overflow_action = IGNORE
plugin_dir = {plugins}
end_of_event_timeout = 2
"""


@pytest.fixture
def auditd(kernel_audit: AuditState, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real auditd (its own config, log and empty plugin folder under tmp_path) with one
    rule of its own; stopped afterwards, before kernel_audit restores the state."""
    if shutil.which("auditd") is None:
        skip_unless_ci("auditd is not installed (Debian package auditd)")
    if kernel_audit.pid != 0:
        skip_unless_ci(f"audit is already owned by pid {kernel_audit.pid}")
    (tmp_path / "plugins").mkdir()
    conf = tmp_path / "auditd.conf"
    conf.write_text(AUDITD_CONF.format(log=tmp_path / "audit.log", plugins=tmp_path / "plugins"))
    conf.chmod(0o600)
    daemon = subprocess.Popen(
        ["auditd", "-n", "-c", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while audit_status()["pid"] != daemon.pid:
            assert daemon.poll() is None, f"auditd exited: {daemon.stderr.read() if daemon.stderr else ''}"
            assert time.monotonic() < deadline, "auditd did not become the audit daemon"
            time.sleep(0.05)
        auditctl("-a", "always,exit", "-F", "arch=b64", "-S", "unlinkat", "-k", "auditd-test")
        yield daemon
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def test_multicast_beside_auditd_changes_nothing_of_it(
    auditd: subprocess.Popen[bytes], kernel_audit: AuditState
) -> None:
    before = snapshot()
    assert before.pid == auditd.pid and before.enabled == 1
    token = f"beside-auditd-{uuid.uuid4()}"
    with AuditNetlink() as source:
        assert source.mode == "multicast"
        assert source.state == f"multicast: owned by pid {auditd.pid} (auditd)"
        assert len(our_rules()) == source.stats().rules_installed > 0
        subprocess.run(["/bin/echo", token], stdout=subprocess.DEVNULL, check=True)
        events = collect(source, lambda ev: bool(exec_with(ev, token)), timeout=5)
        assert len(exec_with(events, token)) == 1
        assert source.poll_status() is not None
        # A reader that does not keep up overflows its socket: ENOBUFS, counted.
        small = AuditNetlink(AuditNetlinkOptions(rcvbuf_bytes=4096))
        try:
            assert small.mode == "multicast"
            for i in range(100):
                subprocess.run(["/bin/true", f"{token}-{i}"], check=True)
            missed = collect(small, lambda ev: False, timeout=1.0)
            assert small.stats().enobufs >= 1
            ours = [e for e in missed if e.get("t") == "exec" and
                    any(text(a).startswith(f"{token}-") for a in e.get("argv", []))]
            assert len(ours) < 100, "ENOBUFS counted, but every exec arrived"
        finally:
            small.close()
    after = snapshot()
    assert after == before, "auditd's ownership, rules or enable flag changed"
    assert any("key=auditd-test" in r for r in after.rules)
    assert our_rules() == []


def test_multicast_reports_audit_disabled_under_another_owner(
    auditd: subprocess.Popen[bytes], kernel_audit: AuditState
) -> None:
    auditctl("-e", "0")
    with AuditNetlink() as source:
        assert source.mode == "multicast"
        assert "audit is disabled (enabled 0): no events will come" in source.state
        assert audit_status()["enabled"] == 0, "the source enabled audit under auditd"
    assert audit_status()["enabled"] == 0
    auditctl("-e", "1")


# ---------------------------------------------------------------------------------------------
# the datagram decoder: framing and malformed input, no socket

HEADER = struct.Struct("=IHHII")
STAMP = b"audit(1717171717.123:%d): "


def unicast(rtype: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), rtype, 0, 0, 0) + payload


def multicast(rtype: int, payload: bytes) -> bytes:
    return HEADER.pack(16 + len(payload), rtype, 0, 0, 0) + payload


def exec_records(serial: int) -> list[tuple[int, bytes]]:
    s = STAMP % serial
    return [
        (1300, s + b'arch=c000003e syscall=59 success=yes exit=0 ppid=1 pid=77 uid=0 gid=0 '
         b'euid=0 comm="true" exe="/usr/bin/true" key="iot-micro-agent"'),
        (1309, s + b'argc=2 a0="/bin/true" a1="x"'),
        (1320, s),
    ]


def test_decoder_unicast_and_multicast_framing_give_the_same_event() -> None:
    results = []
    for frame in (unicast, multicast):
        decoder = NetlinkDecoder()
        batches = []
        for rtype, payload in exec_records(5):
            batches += decoder.feed(frame(rtype, payload))
        batches += decoder.flush()
        results.append(decode(batches))
        stats = decoder.stats()
        assert (stats.records, stats.messages, stats.malformed, stats.length_mismatch) == (3, 3, 0, 0)
    assert results[0] == results[1]
    assert len(results[0]) == 1 and results[0][0]["argv"] == ["/bin/true", "x"]


def test_decoder_counts_malformed_and_odd_lengths_without_crashing() -> None:
    decoder = NetlinkDecoder()
    syscall, execve, eoe = exec_records(9)
    cases = [
        b"",  # nothing
        b"\x01\x02\x03",  # shorter than a header
        HEADER.pack(100, 1300, 0, 0, 0)[:15],  # a header cut short
        HEADER.pack(0, 2, 0, 0, 0) + b"\0" * 20,  # control message with length 0
        HEADER.pack(0xFFFFFFFF, 3, 0, 0, 0),  # control message with a huge length
        HEADER.pack(17, 2, 0, 0, 0) + b"\0",  # an NLMSG_ERROR too short for its code
    ]
    for case in cases:
        assert decoder.feed(case) == []
    stats = decoder.stats()
    assert stats.malformed == 5 and stats.records == 0
    # Records whose nlmsg_len is neither form, or absurd, are bounded by the datagram.
    decoder.feed(HEADER.pack(0xFFFFFFFF, syscall[0], 0, 0, 0) + syscall[1])
    decoder.feed(HEADER.pack(3, execve[0], 0, 0, 0) + execve[1] + b"\0\0\0\0")  # NUL padding
    decoder.feed(multicast(*eoe))
    # An ack, an error and an AUDIT_REPLACE probe in one datagram.
    ack = HEADER.pack(36, 2, 0, 1, 0) + struct.pack("=i", 0) + HEADER.pack(16, 1001, 5, 1, 0)
    err = HEADER.pack(36, 2, 0, 2, 0) + struct.pack("=i", -17) + HEADER.pack(16, 1011, 5, 2, 0)
    replace = HEADER.pack(20, 1329, 0, 0, 0) + struct.pack("=I", 42)
    decoder.feed(ack + err + replace)
    events = decode(decoder.flush())
    stats = decoder.stats()
    assert stats.records == 3 and stats.length_mismatch == 2
    assert (stats.acks, stats.nl_errors, stats.replaced) == (1, 1, 1)
    assert stats.malformed == 5
    assert len(events) == 1 and events[0]["argv"] == ["/bin/true", "x"]


# ---------------------------------------------------------------------------------------------
# memory


def test_entry_points_keep_rss_flat(kernel_audit: AuditState) -> None:
    try:
        from leakcheck import assert_rss_flat
    except ImportError:
        from tests.leakcheck import assert_rss_flat

    datagram = b"".join(multicast(t, p) for t, p in exec_records(1)[:1])
    decoder = NetlinkDecoder()
    counter = iter(range(10**9))

    def decode_one() -> None:
        serial = next(counter)
        for rtype, payload in exec_records(serial):
            decoder.feed(unicast(rtype, payload))
        decoder.feed(datagram[:7])

    assert_rss_flat(decode_one, name="am_audit_nl_decode")

    with AuditNetlink(AuditNetlinkOptions(exec_rules=False, net_rules=False)) as source, \
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT) as forger:
        sink = EventSink()
        forger.bind((0, 0))
        portid = event_portid(source)
        serials = iter(range(10**9))

        def read_side() -> None:
            # Datagrams to read: the recvmmsg path, its slots and the held-datagram resume.
            for datagram in forged_exec(next(serials), "leak"):
                forger.sendto(datagram, (portid, 0))
            pump(source.drain, sink, lambda batches: None)
            pump(lambda s: source.expire(s, now_ms()), sink, lambda batches: None, seal=True)
            source.stats()
            source.fileno()
            _ = (source.mode, source.state, source.rules_report, source.found_status)

        assert_rss_flat(read_side, name="drain/expire/seal/stats/state/...")
        assert_rss_flat(source.poll_status, name="am_anl_poll_status")

    # open/close talk to the kernel several times each (status, ownership, enable, backlog):
    # 2,000 calls. With the agent's 8 rules an open/close takes ~0.1 s (the kernel spends
    # ~13 ms on each rule deletion), so that form runs 60 times a round: the rule buffers
    # (over 1 KB each) would still show.
    def open_close() -> None:
        AuditNetlink(AuditNetlinkOptions(exec_rules=False, net_rules=False)).close()

    assert_rss_flat(open_close, calls=2000, name="am_anl_new/open/close/free")

    def open_close_rules() -> None:
        AuditNetlink().close()

    assert_rss_flat(open_close_rules, calls=60, name="am_anl_open/close with rules")
