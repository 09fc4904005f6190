"""Differential tests: the C core and the pure-Python reference (the oracle of
docs/audit-parsing.md) must give the same events, in the same order, and the same counters.

Inputs: the recorded logs of tests/fixtures/audit/, the device log under tight bounds, small
crafted inputs for the corner cases of the parsing rules and, when $AGENT_CORPUS_DIR names a
larger corpus, its device logs and every file under its public/ (other projects' test logs,
some of them not audit logs at all).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import DEVICE_LOGS, FIXTURES, external_corpus
from hypothesis import given, settings
from hypothesis import strategies as st

Event = dict[str, Any]
ParseResult = tuple[list[Event], dict[str, int]]
Parse = Callable[..., ParseResult]

def _corpus_files() -> list[Path]:
    """The fixtures' logs, then the external corpus's device logs and public/ files (collected
    at import time: parametrization needs them)."""
    files = [FIXTURES / name for name in DEVICE_LOGS]
    external = external_corpus()
    if external is not None:
        files += [external / name for name in DEVICE_LOGS]
        public = external / "public"
        if public.is_dir():
            files += sorted(p for p in public.rglob("*") if p.is_file())
    return files


def _file_id(path: Path) -> str:
    external = external_corpus()
    if external is not None and path.is_relative_to(external):
        return f"corpus/{path.relative_to(external)}"
    return f"fixtures/{path.relative_to(FIXTURES)}"


def _describe(core: Event, ref: Event) -> str:
    keys = sorted(set(core) | set(ref))
    diff = {k: (core.get(k, "<absent>"), ref.get(k, "<absent>")) for k in keys}
    return repr({k: v for k, v in diff.items() if v[0] != v[1]})[:2000]


def assert_same(core: ParseResult, ref: ParseResult) -> None:
    core_events, core_stats = core
    ref_events, ref_stats = ref
    for i, (a, b) in enumerate(zip(core_events, ref_events)):
        assert a == b, f"event {i} (sn {b.get('sn')}) differs, (core, reference): {_describe(a, b)}"
    assert len(core_events) == len(ref_events)
    assert core_stats == ref_stats


@pytest.mark.parametrize("path", _corpus_files(), ids=_file_id)
def test_corpus_file(core_parse: Parse, reference_parse: Parse, path: Path) -> None:
    data = path.read_bytes()
    core = core_parse(data)
    ref = reference_parse(data)
    assert ref[1]["bytes"] == len(data)
    assert_same(core, ref)


TIGHT: dict[str, int] = {
    "max_in_flight": 3,
    "timeout_ms": 1,
    "max_line_bytes": 1024,
    "max_event_bytes": 1100,
    "max_pending_bytes": 1500,
    "batch_bytes": 4096,
    "max_batches": 1,
}
TINY = {**TIGHT, "max_line_bytes": 256, "max_event_bytes": 264, "max_pending_bytes": 264}


_SERIAL = re.compile(rb"msg=audit\([0-9.]+:([0-9]+)\)")


def interleaved(data: bytes, ways: int = 2) -> bytes:
    """The log's events dealt in turn to `ways` streams, whose lines are then taken one from
    each stream in turn: the records of concurrent events interleave as they do when several
    CPUs write at once, so events are cut by the bounds, time out and come back late. The
    recorded fixture, from a quiet machine, has almost no such interleaving of its own."""
    events: dict[bytes | None, list[bytes]] = {}
    for line in data.splitlines(keepends=True):
        match = _SERIAL.search(line)
        events.setdefault(match.group(1) if match else None, []).append(line)
    streams: list[list[bytes]] = [[] for _ in range(ways)]
    for i, lines in enumerate(events.values()):
        streams[i % ways].extend(lines)
    longest = max(len(stream) for stream in streams)
    return b"".join(stream[i] for i in range(longest) for stream in streams if i < len(stream))


def _tight_inputs() -> list[tuple[str, Path, bool]]:
    """(id, log, interleave): the fixture's RAW log and the external corpus's, interleaved.
    The corpus's log has interleaving of its own, but events age by when their records came
    (docs/audit-parsing.md, step 6), and as recorded no event stays open while the stream time
    moves on: only dealt into streams do its events time out."""
    inputs = [("fixtures-interleaved", FIXTURES / "device-raw.log", True)]
    external = external_corpus()
    if external is not None:
        inputs.append(("corpus-interleaved", external / "device-raw.log", True))
    return inputs


@pytest.mark.parametrize(("log", "interleave"), [i[1:] for i in _tight_inputs()],
                         ids=[i[0] for i in _tight_inputs()])
@pytest.mark.parametrize(
    ("options", "exercised"),
    [
        (TIGHT, ("long_lines", "forced", "timeouts", "duplicates")),
        ({**TIGHT, "timeout_ms": 100000, "max_in_flight": 2}, ("forced", "duplicates")),
        (TINY, ("long_lines", "truncated", "forced")),
    ],
)
def test_device_log_under_tight_bounds(
    core_parse: Parse,
    reference_parse: Parse,
    log: Path,
    interleave: bool,
    options: dict[str, int],
    exercised: tuple[str, ...],
) -> None:
    """Long lines skipped, events cut and forced out or timed out, many batches."""
    data = log.read_bytes()
    if interleave:
        data = interleaved(data)
    core = core_parse(data, options)
    ref = reference_parse(data, options)
    stats = ref[1]
    assert all(stats[name] > 0 for name in exercised), stats
    assert stats["batches"] > 10
    assert_same(core, ref)


def test_interleaving_keeps_every_line() -> None:
    data = (FIXTURES / "device-raw.log").read_bytes()
    mixed = interleaved(data)
    assert mixed != data
    assert sorted(mixed.splitlines()) == sorted(data.splitlines())


# ---------------------------------------------------------------------------------------------
# crafted inputs

S = 'type=SYSCALL msg=audit(1700000000.100:{sn}): arch=c000003e syscall={nr} success={ok} exit={rc} a0=3 items=0 ppid=1 pid=2 auid=1000 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=pts0 ses=1 comm="c" exe="/bin/c" key=(null)'


def syscall(sn: int, nr: int = 42, ok: str = "yes", rc: int = 0) -> bytes:
    return S.format(sn=sn, nr=nr, ok=ok, rc=rc).encode()


def rec(kind: str, sn: int, fields: str, ts: str = "1700000000.100") -> bytes:
    return f"type={kind} msg=audit({ts}:{sn}): {fields}".encode()


def lines(*items: bytes) -> bytes:
    return b"\n".join(items) + b"\n"


CASES: dict[str, bytes] = {
    "crlf-and-blank": b"\r\n  \t \n" + rec("BPF", 1, "prog-id=1 op=LOAD") + b"\r\n\n",
    "unterminated-last-line": rec("BPF", 1, "prog-id=1 op=LOAD"),
    "malformed-lines": lines(
        b"garbage",
        b"bad type=BPF msg=audit(1.0:1): a=1",
        b"type=NOPE msg=audit(1.0:1): a=1",
        b"type=UNKNOWN[] msg=audit(1.0:1): a=1",
        b"type=BPF msg=audit(1.0:1 a=1",
        b"type=BPF msg=audit(1:1): a=1",
        b"type=BPF msg=audit(.5:1): a=1",
        b"type=BPF msg=audit(1.5:): a=1",
        b"type=BPF msg=audit(1.5:18446744073709551616): a=1",
        b"type=BPF msg=audit(18446744073709552.000:1): a=1",
        b"type=BPF  msg=audit(1.5:1):",
        b"type=DAEMON_START msg=audit(1.5:2) op=start auid=0 pid=1 res=success",
        b"type=BPF msg=audit(1.5:3)",
        b"type=BPF msg=audit(1.5:4)x=1",
    ),
    "prefixes-and-node": lines(
        b"node=a host=b type=BPF msg=audit(1.5:1): x=1",
        b"node=a node=b type=BPF msg=audit(1.5:1): x=1",
        b"node= type=BPF msg=audit(1.5:1): x=1",
        b"=x type=BPF msg=audit(1.5:1): x=1",
        b"  node=n1   type=BPF msg=audit(1.5:2): x=1",
    ),
    "unknown-types": lines(
        rec("UNKNOWN[1334]", 1, "prog-id=45 op=UNLOAD"),
        rec("UNKNOWN[65000]", 2, "a=1"),
        rec("UNKNOWN[01334]", 3, "a=1"),
        rec("UNKNOWN[4294967296]", 4, "a=1"),
    ),
    "timestamps": lines(
        rec("BPF", 1, "a=1", ts="1700000000.5"),
        rec("BPF", 2, "a=1", ts="1700000000.123456789"),
        rec("BPF", 3, "a=1", ts="0.000"),
        rec("BPF", 18446744073709551615, "a=1", ts="18446744073709550.999"),
    ),
    "enriched-cut-and-spaces": lines(
        rec("BPF", 1, '   a=1 b="x"  \x1dA="y"'),
        rec("BPF", 2, "a=1 \x1d"),
        rec("BPF", 3, ""),
    ),
    "tokens": lines(
        rec("BPF", 1, 'a="unterminated value'),
        rec("BPF", 2, "a='single quoted' b=\"x\"y c= =bare d"),
        rec("BPF", 3, 'dup=1 dup=2 uid=4294967295 auid="4294967295" key=(null) tty=(none) x=?'),
        rec("BPF", 4, 'name=2F746D70 name2=2F746D70 exe=2F7 comm=ZZ cwd="2F" acct=FF41'),
        rec("BPF", 5, 'avc:  denied  { read } for  pid=1 comm="x"'),
        rec("BPF", 6, "subj==/usr/bin/man//&man_groff (enforce) pid=1"),
        rec("BPF", 7, 'a="x"b=2 c'),
    ),
    "user-msg": lines(
        rec(
            "USER_AVC", 1, "pid=1 uid=0 msg='avc:  received policyload notice (seqno=2)  exe=2F62'"
        ),
        rec("SERVICE_START", 2, 'pid=1 uid=0 msg=\'unit=x comm="systemd" exe="/x" res=success\''),
        rec("SERVICE_STOP", 3, "pid=1 uid=0 msg=' unit=x res=success'"),
        rec(
            "CRYPTO_KEY_USER",
            4,
            "pid=1 uid=0 msg='op=destroy kind=server spid=2 suid=0  exe=\"/s\" hostname=? addr=? terminal=? res=success'",
        ),
        rec("SOFTWARE_UPDATE", 5, "pid=1 uid=7 msg='op=install uid=8 sw=\"a b\"'"),
        rec(
            "USER_CMD",
            6,
            'pid=1 uid=0 msg=\'cwd="/" cmd=6C73 exe="/usr/bin/sudo" terminal=pts/0 res=success\'',
        ),
    ),
    "auth-values": lines(
        rec(
            "USER_AUTH",
            1,
            'pid=1 uid=0 auid=4294967295 ses=4294967295 msg=\'op=PAM:authentication grantors=? acct="root" exe="/usr/bin/su" hostname=? addr=? terminal=? res=failed\'',
        ),
        rec(
            "USER_ERR",
            2,
            'pid=1 uid=0 auid=1 ses=2 msg=\'op=PAM:bad_ident grantors=? acct="?" exe="/usr/sbin/sshd" hostname=10.0.0.1 addr=10.0.0.1 terminal=ssh res=failed\'',
        ),
        rec(
            "USER_LOGIN",
            3,
            "pid=1 uid=0 auid=1000 ses=4 msg='op=login id=1000 exe=\"/usr/sbin/sshd\" hostname=h addr=::1 terminal=ssh res=1'",
        ),
        rec("USER_LOGOUT", 4, "pid=1 uid=0 msg='op=? acct=726F6F74 res=0'"),
        rec("USER_START", 5, "pid=x pid=7 uid=0 msg='op=a result=success res=failed'"),
        rec(
            "ANOM_LOGIN_FAILURES", 6, "pid=1 uid=0 auid=0 ses=1 msg='op=login acct=\"u\" res=fail'"
        ),
        rec("ADD_USER", 7, "pid=1 uid=0 msg='op=adding user id=4294967295 exe=\"/x\" res=success'"),
        rec(
            "USYS_CONFIG",
            8,
            "pid=1 uid=0 msg='op=change-system-time exe=\"/x\" hostname=h res=failed'",
        ),
        rec("DAEMON_END", 9, "op=terminate auid=0 pid=12 subj= res=success"),
    ),
    "login-and-config": lines(
        rec(
            "LOGIN",
            10,
            "pid=5 uid=0 old-auid=4294967295 auid=1000 tty=(none) old-ses=4294967295 ses=3 res=1",
        ),
        syscall(10, nr=1),
        rec("PROCTITLE", 10, "proctitle=2F62696E2F73680041"),
        rec("CONFIG_CHANGE", 11, "auid=1 ses=2 op=add_rule key=6B31016B32 list=4 res=0"),
        syscall(11, nr=44),
        rec("EOE", 11, ""),
    ),
    "exec-argv": lines(
        syscall(20, nr=59),
        rec("EXECVE", 20, 'argc=4 a0="/bin/echo" a1=41FF a2=(null) a3=""'),
        rec("CWD", 20, "cwd=2F746D70"),
        rec(
            "PATH",
            20,
            "item=0 name=(null) inode=x inode=12 dev=fe:00 mode=0100644 mode=9 nametype=NORMAL",
        ),
        rec("PATH", 20, 'item=1 name="/lib" nametype=? mode=01777777777777777777777'),
        rec("PROCTITLE", 20, "proctitle=2F62696E2F6563686F00"),
        syscall(21, nr=59),
        rec("EXECVE", 21, 'argc=3 a0="x" a1_len=8 a1[0]=4142 a1[1]="CD" a1[2]=(null) a2="z"'),
        rec("EOE", 21, ""),
        syscall(22, nr=59),
        rec("EXECVE", 22, 'argc=3 a0="x" a2="y" a1="late"'),
        rec("EOE", 22, ""),
        syscall(23, nr=59),
        rec("EXECVE", 23, 'argc=1 a0="x" a1[0]=41'),
        rec("EOE", 23, ""),
        syscall(24, nr=59),
        rec("EXECVE", 24, 'argc=5 a0="x"'),
        rec("EOE", 24, ""),
        rec("EXECVE", 25, 'argc=0 a0="whoami"'),
        rec("EOE", 25, ""),
        syscall(26, nr=59, ok="no", rc=-2),
        rec("PROCTITLE", 26, 'proctitle=""'),
        syscall(27, nr=322),
        rec("PROCTITLE", 27, "proctitle=61000062"),
        syscall(28, nr=59),
        rec("PROCTITLE", 28, "proctitle=(null)"),
        syscall(29, nr=59),
        rec("PROCTITLE", 29, 'proctitle="bash"'),
    ),
    "sockaddr": lines(
        *(
            item
            for sn, saddr in enumerate(
                [
                    "01002F746D702F7800",  # unix path, cut at NUL
                    "0100006162630000",  # abstract, trailing NULs
                    "0100",  # unnamed
                    "010000",  # abstract, empty
                    "02000035C0A80001",  # inet
                    "0002003501020304",  # inet, big-endian family
                    "02000035",  # inet, short
                    "0A0001BB00000000FE800000000000000000000000000001",  # inet6
                    "0A0001BB0000000000000000000000000000FFFF7F000001",  # v4-mapped
                    "0A0001BB0000000000000000000000000000000001020304",  # v4-compatible
                    "0A0001BB0000000000000000000000000000000000000001",  # ::1
                    "0A0001BB0000000020010DB8000000010000000000000001",  # one zero run
                    "0A0001BB0000000020010DB8000000000001000000000001",  # tie: first wins
                    "0A0001BB0000000000010002000300040005000600070008",  # no zeros
                    "1000000001020304FFFFFFFF",  # netlink, host order
                    "0010000001020304FFFFFFFE",  # netlink, big-endian
                    "10000000",  # netlink, short
                    "2A00",  # unknown family
                    "00000000",  # family 0
                    "0",  # odd length
                    "ZZ",  # not hex
                    "01",  # one byte
                ],
                start=30,
            )
            for item in (syscall(sn), rec("SOCKADDR", sn, f"saddr={saddr}"), rec("EOE", sn, ""))
        ),
        syscall(60, nr=43),
        rec("EOE", 60, ""),
        syscall(61, nr=49),
        rec("SOCKADDR", 61, 'saddr="020000357F000001"'),
        rec("EOE", 61, ""),
    ),
    "other-arches": lines(
        rec("SYSCALL", 70, "arch=40000003 syscall=102 success=yes exit=0 a0=3 a1=bf924280 pid=1"),
        rec("SOCKETCALL", 70, "nargs=3 a0=3 a1=bf924280 a2=10"),
        rec("SOCKADDR", 70, "saddr=02000035C0A80001"),
        rec("EOE", 70, ""),
        rec("SYSCALL", 71, "arch=40000003 syscall=102 success=yes exit=0 a0=12 pid=1"),
        rec("SOCKETCALL", 71, "nargs=4 a0=12 a1=0"),
        rec("EOE", 71, ""),
        rec("SYSCALL", 72, "arch=40000003 syscall=102 success=yes exit=0 a0=2 pid=1"),
        rec("EOE", 72, ""),
        rec("SYSCALL", 73, "arch=c00000b7 syscall=221 success=yes exit=0 pid=1"),
        rec("EOE", 73, ""),
        rec("SYSCALL", 74, "arch=40000028 syscall=283 success=yes exit=0 pid=1"),
        rec("EOE", 74, ""),
        rec("SYSCALL", 75, "arch=c0000015 syscall=11 success=yes exit=0 pid=1"),
        rec("EOE", 75, ""),
        rec("SYSCALL", 76, "arch=? syscall=x success=maybe exit=-9223372036854775808 pid=-1"),
        rec("EOE", 76, ""),
        rec(
            "SYSCALL", 77, "arch=c000003e syscall=9999 success=no exit=99999999999999999999 ppid=?"
        ),
        rec("EOE", 77, ""),
    ),
    "assembly": lines(
        syscall(80),
        syscall(81),
        rec("EOE", 80, ""),
        rec("EOE", 99, ""),
        rec("PATH", 81, 'item=0 name="/x"'),
        rec("BPF", 82, "a=1", ts="1700000003.000"),
        rec("BPF", 83, "a=1", ts="1700000001.000"),
        rec("PROCTITLE", 84, "proctitle=41"),
        rec("BPF", 85, "a=1", ts="1700000010.000"),
    ),
    "loss-accounting": lines(
        *(
            rec("BPF", sn, "a=1") + b"\n" + rec("EOE", sn, "")
            for sn in (100, 101, 103, 103, 99, 5000, 4000, 10**12, 10**12 + 2)
        ),
        rec("DAEMON_START", 7, "op=start auid=0 pid=1 res=success"),
        b"node=x " + rec("BPF", 5, "a=1"),
        b"node=x " + rec("BPF", 9, "a=1"),
        *(b"node=n%d " % i + rec("BPF", 1, "a=1") for i in range(10)),
    ),
    "non-utf8": lines(
        b'node=\xff type=BPF msg=audit(1.5:1): a=\xfe b="\xc3\x28" name=FF name2=C3A9',
        b"\xff\xfe",
        b"type=BPF msg=audit(1.5:2): \xc3\xa9=1 x=\xe2\x82 \xff",
        b'type=SYSCALL msg=audit(1.5:3): arch=c000003e syscall=59 comm=FF exe="\xff"',
        b'type=EXECVE msg=audit(1.5:3): argc=2 a0=FF a1="\xc3"',
        b"type=EOE msg=audit(1.5:3): ",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_crafted_input(core_parse: Parse, reference_parse: Parse, case: str) -> None:
    data = CASES[case]
    core = core_parse(data)
    ref = reference_parse(data)
    assert ref[1]["lines"] > 0
    assert_same(core, ref)


@pytest.mark.parametrize("chunk", [1, 3])
def test_crafted_inputs_chunked(core_parse: Parse, reference_parse: Parse, chunk: int) -> None:
    data = b"".join(CASES[name] for name in sorted(CASES) if name != "unterminated-last-line")
    whole = reference_parse(data)
    assert reference_parse(data, chunk=chunk) == whole
    assert_same(core_parse(data, chunk=chunk), whole)


SMALL_LINES: dict[str, int] = {
    "max_line_bytes": 256,
    "max_event_bytes": 300,
    "max_pending_bytes": 700,
    "max_in_flight": 2,
}


def test_bounds(core_parse: Parse, reference_parse: Parse) -> None:
    long_value = "x" * 300
    data = (
        lines(
            rec("BPF", 1, f"a={long_value}"),  # a long line
            rec("BPF", 2, "a=" + "y" * 200),
            syscall(3),
            rec("PATH", 3, "name=" + "z" * 200),  # over max_event_bytes: not kept, trunc
            rec("PATH", 4, "name=" + "z" * 200),
            rec("PATH", 5, "name=" + "z" * 200),  # max_in_flight: the oldest is forced out
            rec("PATH", 6, "name=" + "z" * 200),
            rec("PATH", 6, "name=" + "w" * 10),
            rec("PATH", 7, "name=" + "z" * 200),  # max_pending_bytes
        )
        + b"y" * 1000
    )  # an unterminated long line
    core = core_parse(data, SMALL_LINES)
    ref = reference_parse(data, SMALL_LINES)
    assert ref[1]["long_lines"] == 2 and ref[1]["truncated"] >= 1 and ref[1]["forced"] >= 1
    assert_same(core, ref)


def test_netlink_records() -> None:
    """feed_record: the number comes with the message, the text starts at audit(."""
    import msgpack
    from oracle.audit_reference import ReferenceAuditParser

    from agent import native

    records: list[tuple[int, bytes]] = [
        (1300, syscall(1).split(b"msg=", 1)[1]),
        (1306, b"audit(1700000000.100:1): saddr=0A0001BB00000000FE800000000000000000000000000001"),
        (1320, b"audit(1700000000.100:1): "),
        (1334, b"audit(1700000000.200:2): prog-id=1 op=LOAD"),
        (1112, b"audit(1700000000.300:3): pid=1 uid=0 msg='op=login acct=\"u\" res=success'"),
        (9999, b"audit(1700000000.400:4): a=1"),
        (1300, b"garbage"),
        (1300, b"audit(1700000000.500:5): " + b"a" * 70000),
    ]
    core = native.AuditParser()
    ref = ReferenceAuditParser()
    core_batches: list[bytes] = []
    ref_events: list[Event] = []
    for rtype, payload in records:
        core_batches += core.feed_record(rtype, payload)
        ref_events += ref.feed_record(rtype, payload)
    core_batches += core.flush()
    ref_events += ref.flush()
    core_events: list[Event] = []
    for batch in core_batches:
        core_events += msgpack.unpackb(batch, raw=False)
    # The parser's counters, and the batches its sink sealed.
    stats = {**dict(core.stats()), "batches": core.sink.stats().batches}
    core_stats = {name: stats[name] for name in ref.stats()}
    # USER_LOGIN completes on arrival, the others at the EOE or at flush
    assert [e["rt"] for e in ref_events] == ["SYSCALL", "USER_LOGIN", "BPF", "UNKNOWN[9999]"]
    assert_same((core_events, core_stats), (ref_events, ref.stats()))


# ---------------------------------------------------------------------------------------------
# generated inputs

FRAGMENTS = [
    b"type=SYSCALL msg=audit(1700000000.123:42): ",
    b"type=EXECVE msg=audit(1700000000.123:42): argc=3 ",
    b"type=EXECVE msg=audit(1700000000.123:42): a2=",
    b"type=PROCTITLE msg=audit(1700000000.123:42): proctitle=",
    b"type=EOE msg=audit(1700000000.123:42):",
    b"type=PATH msg=audit(1700000000.123:42): name=",
    b"type=CWD msg=audit(1700000000.123:42): cwd=",
    b"type=SOCKETCALL msg=audit(1700000000.123:42): a0=",
    b"type=SOCKADDR msg=audit(1.5:7): saddr=",
    b"node=n1 type=USER_LOGIN msg=audit(1700000001.000:43): pid=1 msg='op=login acct=",
    b"type=CONFIG_CHANGE msg=audit(1700000000.124:45): op=add key=",
    b"type=DAEMON_START msg=audit(1700000000.124:46) ",
    b"type=UNKNOWN[1334] msg=audit(1700000002.5:44): ",
    b"type=BPF msg=audit(1700000009.999:47): ",
    b'a0="x" a1_len=4 a1[0]=4142 a1[1]=4344 ',
    b"arch=c000003e syscall=59 success=yes exit=0 ",
    b"arch=40000003 syscall=102 a0=3 ",
    *(b"%s=" % k for k in (b"a1", b"a3[0]", b"a2_len", b"mode", b"inode", b"res", b"result")),
    *(b"%s=" % k for k in (b"uid", b"auid", b"ses", b"pid", b"old-auid", b"id", b"list")),
    *(b"%s=" % k for k in (b"msg", b"exe", b"comm", b"hostname")),
    *(b"0A00", b"0200", b"0100", b"1000", b"7F000001", b"41", b"FF", b"12", b"0100755"),
    *(b"1", b"0", b"-", b"success", b"(none)", b"4294967295", b"\xc3", b"\xa9"),
    *(b"'", b'"', b"\x1d", b"\n", b"\r", b"=", b" ", b"  "),
]

GENERATED_OPTIONS = [
    None,
    {
        "max_in_flight": 2,
        "timeout_ms": 5,
        "max_line_bytes": 256,
        "max_event_bytes": 300,
        "max_pending_bytes": 400,
        "batch_bytes": 4096,
    },
]


@settings(max_examples=400, derandomize=True, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=60),
    options=st.sampled_from(GENERATED_OPTIONS),
)
def test_generated_input(
    core_parse: Parse,
    reference_parse: Parse,
    pieces: list[bytes],
    options: dict[str, int] | None,
) -> None:
    """Records glued together from audit fragments, in any order: both parsers agree."""
    data = b"".join(pieces)
    ref = reference_parse(data, options)
    assert ref[1]["bytes"] == len(data)
    assert_same(core_parse(data, options), ref)
