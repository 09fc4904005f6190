"""The recorded audit logs, parsed by both implementations (`audit_impl`).

tests/fixtures/audit/device-raw.log and device-enriched.log were written by a real kernel and
auditd while workload.sh (beside them) ran once with auditd's RAW and once with its ENRICHED
log format; scripts/record-fixtures records them again. Three kinds of check:

- the events are the expected ones (*.events.jsonl: the C parser's output when they were
  recorded, reviewed then), and the counters agree with the log text (counts.json);
- what the workload ran is there: every expectation is a literal taken from workload.sh and
  checked against the log text (grep), never computed by the code under test;
- RAW and ENRICHED give the same events, and feeding in chunks changes nothing.

With $AGENT_CORPUS_DIR, the larger corpus's two device logs get the checks that hold for any
pair of logs: counters against the text, RAW equal to ENRICHED, chunked feeding.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import DEVICE_LOGS, FIXTURES, external_corpus

Event = dict[str, Any]
ParseResult = tuple[list[Event], dict[str, int]]
Parse = Callable[..., ParseResult]

_STAMP = re.compile(rb"^(?:node=\S+ )?type=(\S+) msg=audit\(\d+\.\d+:(\d+)\):")


def _logs() -> list[Path]:
    logs = [FIXTURES / name for name in DEVICE_LOGS]
    external = external_corpus()
    if external is not None:
        logs += [external / name for name in DEVICE_LOGS]
    return logs


def _log_id(path: Path) -> str:
    return f"{'fixtures' if path.parent == FIXTURES else 'corpus'}/{path.name}"


LOGS = _logs()
FIXTURE_LOGS = LOGS[:2]


@pytest.fixture(scope="module")
def results(audit_impl: Parse) -> dict[Path, ParseResult]:
    """Each log parsed once per implementation."""
    return {path: audit_impl(path.read_bytes()) for path in LOGS}


def events_of(results: dict[Path, ParseResult], name: str) -> list[Event]:
    return results[FIXTURES / name][0]


def text_counts(data: bytes) -> dict[str, Any]:
    """What a reading of the text finds: bytes, lines, records by type, distinct serials."""
    lines = data.splitlines()
    types: Counter[str] = Counter()
    serials: set[int] = set()
    for line in lines:
        match = _STAMP.match(line)
        if match:
            types[match.group(1).decode()] += 1
            serials.add(int(match.group(2)))
    return {
        "bytes": len(data),
        "lines": len(lines),
        "serials": len(serials),
        "types": dict(sorted(types.items())),
    }


def _unbytes(value: Any) -> Any:
    if isinstance(value, dict):
        if value.keys() == {"$bytes"}:
            return bytes.fromhex(value["$bytes"])
        return {k: _unbytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unbytes(v) for v in value]
    return value


def expected_events(name: str) -> list[Event]:
    path = FIXTURES / name.replace(".log", ".events.jsonl")
    with path.open(encoding="utf-8") as lines:
        return [_unbytes(json.loads(line)) for line in lines]


# ---------------------------------------------------------------------------------------------
# the fixtures hold what they say


def test_counts_file_matches_the_logs() -> None:
    """counts.json was read from the logs' text when they were recorded: the logs are still
    those (a re-recording rewrites both)."""
    counts = json.loads((FIXTURES / "counts.json").read_text())
    for name in DEVICE_LOGS:
        assert counts[name] == text_counts((FIXTURES / name).read_bytes()), name


def test_fixtures_stay_small() -> None:
    """A few MB at most in the repository: every clone carries them."""
    total = sum(p.stat().st_size for p in FIXTURES.iterdir() if p.is_file())
    assert total < 2_500_000, f"tests/fixtures/audit holds {total:,} bytes"


# ---------------------------------------------------------------------------------------------
# any log: counters against the text


@pytest.mark.parametrize("log", LOGS, ids=_log_id)
def test_counters_agree_with_the_text(results: dict[Path, ParseResult], log: Path) -> None:
    events, stats = results[log]
    counts = text_counts(log.read_bytes())
    records = sum(counts["types"].values())
    assert records == counts["lines"], "every line of a device log is a record"
    assert len(events) == counts["serials"]
    assert stats == {
        "bytes": counts["bytes"],
        "lines": counts["lines"],
        "records": records,
        "events": counts["serials"],
        "malformed": 0,
        "long_lines": 0,
        "truncated": 0,
        "forced": 0,
        "timeouts": 0,
        "duplicates": 0,
        "gaps": 0,
        "batches": stats["batches"],
    }
    assert stats["batches"] >= 1
    # one SYSCALL record per syscall event
    assert sum(1 for e in events if "sc" in e) == counts["types"]["SYSCALL"]


@pytest.mark.parametrize("log", FIXTURE_LOGS, ids=_log_id)
def test_events_are_the_expected_ones(results: dict[Path, ParseResult], log: Path) -> None:
    events, _ = results[log]
    expected = expected_events(log.name)
    for i, (got, want) in enumerate(zip(events, expected)):
        assert got == want, f"event {i} (sn {want.get('sn')})"
    assert len(events) == len(expected)


# ---------------------------------------------------------------------------------------------
# what workload.sh ran (fixtures)

RAW, ENRICHED = DEVICE_LOGS
LOOPS = 60  # workload.sh's `for i in $(seq 1 60)`

# Per log: the IPv4 and IPv6 listeners' ephemeral ports and the login session. From the text:
# saddr=0200D3D3 7F000001 (54227) and 0A00A875... (43125) thirty and ten times in the RAW log,
# 0200A6BB... (42683) and 0A00E675... (58997) in the ENRICHED one; the LOGIN record gave the
# workload ses=4, then ses=5.
FACTS = {RAW: (54227, 43125, 4), ENRICHED: (42683, 58997, 5)}

ECHO_REST = ["arg with spaces", 'quote"inside']
PRINTF_ARGS = ["/usr/bin/printf", "%s\\n", "tab\targ", "newline\narg"]


def registered(name: str) -> bool:
    """Whether the log holds the kernel's CONFIG_CHANGE for auditd's registration (op=set
    audit_pid). The kernel sends it while auditd registers, so whether auditd is reading by
    then, and logs it, depends on timing: a recording may have it or not."""
    return b" op=set audit_pid=" in (FIXTURES / name).read_bytes()


def test_event_kinds() -> None:
    for name in DEVICE_LOGS:
        events = expected_events(name)
        # 532 SYSCALL records, one per syscall event; the other 14 events are user space's
        # (7 PAM records from the two su, 5 account records) and auditd's (start, end).
        assert len(events) == 546
        assert sum(1 for e in events if e["rt"] == "SYSCALL") == 532
        kinds = Counter(e["t"] for e in events)
        # auditd's own first syscall: `auditcfg` when its registration's CONFIG_CHANGE came
        # with it, else a generic `audit` event
        own = {"auditcfg": 1} if registered(name) else {"audit": 1}
        assert kinds == Counter({"exec": 390, "net": 132, "auditcfg": 10, "auth": 8,
                                 "account": 5}) + Counter(own), name


def expected_argvs() -> Counter[tuple[str, ...]]:
    """Every program workload.sh ran, as its argv (some through bash's pipelines and command
    substitutions: seq, head, tr; su runs `sh -c true`; python3 runs /bin/true by fd)."""
    want: Counter[tuple[str, ...]] = Counter()
    want[("/bin/bash", "/tmp/agent-fixture/workload.sh")] = 1
    want[("seq", "1", str(LOOPS))] = 1
    for n in range(1, LOOPS + 1):
        want[("/bin/echo", f"héllo wörld {n}", *ECHO_REST)] = 1
    for argv in (("/bin/true",), ("ls", "/"), ("grep", "-q", "y"), ("sh", "-c", "exit 3")):
        want[argv] = LOOPS
    want[("head", "-c", "9000", "/dev/zero")] = 1
    want[("tr", "\\0", "A")] = 1
    want[("/bin/echo", "A" * 9000)] = 1
    want[("seq", "1", "400")] = 1
    want[("/bin/echo", *(str(i) for i in range(1, 401)))] = 1
    want[("env", "-i", "PATH=/usr/bin", *PRINTF_ARGS)] = 1
    want[tuple(PRINTF_ARGS)] = 1
    want[("su", "-s", "/bin/sh", "-c", "true", "nobody")] = 1
    want[("sh", "-c", "true")] = 1
    want[("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "su", "-c", "true",
          "root")] = 1
    want[("su", "-c", "true", "root")] = 1
    want[("useradd", "-M", "-s", "/usr/sbin/nologin", "agent-fixture")] = 1
    want[("userdel", "agent-fixture")] = 1
    want[("/usr/bin/python3", "-")] = 1
    want[("true-by-fd",)] = 1
    return want


@pytest.mark.parametrize("log", DEVICE_LOGS)
def test_exec_argv_is_what_the_workload_ran(results: dict[Path, ParseResult], log: str) -> None:
    execs = [e for e in events_of(results, log) if e["t"] == "exec"]
    with_argv = [e for e in execs if "argv" in e]
    assert Counter(tuple(e["argv"]) for e in with_argv) == expected_argvs()
    for event in with_argv:
        assert event["argc"] == len(event["argv"])
        assert all(isinstance(arg, str) for arg in event["argv"])
        assert event["ok"] is True and event["rc"] == 0
        assert event["arch"] == "x86_64"
        assert event["key"] == "agent-fixture" and event["auid"] == 4242
        assert event["paths"] and "title" not in event

    # fexecve(3): execveat on the open file, so the path is the fd's
    [by_fd] = [e for e in with_argv if e["argv"] == ["true-by-fd"]]
    assert by_fd["sc"] == "execveat"
    assert all(e["sc"] == "execve" for e in with_argv if e is not by_fd)

    many = [e for e in with_argv if e["argc"] == 401]
    assert len(many) == 1
    assert many[0]["argv"] == ["/bin/echo", *(str(i) for i in range(1, 401))]

    # the 9000-byte argument is logged as a1_len=18000 with a1[k] hex chunks
    long_arg = [e for e in with_argv if e["argv"][0] == "/bin/echo" and len(e["argv"][1]) > 100]
    assert len(long_arg) == 1
    assert long_arg[0]["argv"] == ["/bin/echo", "A" * 9000]

    echo = [e for e in with_argv if e["argv"][1:2] == ["héllo wörld 7"]]
    assert echo[0]["argv"] == ["/bin/echo", "héllo wörld 7", "arg with spaces", 'quote"inside']
    assert echo[0]["cwd"] == "/tmp/agent-fixture"


@pytest.mark.parametrize("log", DEVICE_LOGS)
def test_failed_execs_have_no_argv(results: dict[Path, ParseResult], log: str) -> None:
    """/nonexistent/cmd never runs: bash's execve fails (ENOENT) and the kernel writes no
    EXECVE record, so the event is typed by its syscall and has no argv. useradd and userdel
    also try two helpers that are not installed, and setpriv looks for su in /usr/sbin first."""
    failed = [e for e in events_of(results, log) if e["t"] == "exec" and "argv" not in e]
    assert len(failed) == LOOPS + 13
    for event in failed:
        assert event["sc"] == "execve" and event["ok"] is False and event["rc"] == -2
        assert "argc" not in event
    tried = Counter((e["comm"], e["paths"][0]["n"]) for e in failed)
    assert tried == {
        ("bash", "/nonexistent/cmd"): LOOPS,
        ("useradd", "/usr/sbin/nscd"): 4,
        ("userdel", "/usr/sbin/nscd"): 4,
        ("useradd", "/usr/sbin/sss_cache"): 2,
        ("userdel", "/usr/sbin/sss_cache"): 2,
        ("setpriv", "/usr/sbin/su"): 1,
    }
    nonexistent = next(e for e in failed if e["comm"] == "bash")
    assert nonexistent["paths"] == [{"n": "/nonexistent/cmd", "nt": "UNKNOWN"}]
    assert nonexistent["title"] == ["/bin/bash", "/tmp/agent-fixture/workload.sh"]


@pytest.mark.parametrize("log", DEVICE_LOGS)
def test_net_events(results: dict[Path, ParseResult], log: str) -> None:
    port4, port6, _ = FACTS[log]
    net = [e for e in events_of(results, log) if e["t"] == "net"]
    assert len(net) == 132

    def pick(**want: Any) -> list[Event]:
        return [e for e in net if all(e.get(k) == v for k, v in want.items())]

    # TCP over 127.0.0.1: the listener binds port 0, 30 connects, 30 accepts
    [bind4] = pick(sc="bind", fam="inet")
    assert (bind4["dir"], bind4["laddr"], bind4["lport"], bind4["ok"]) == (
        "bind", "127.0.0.1", 0, True,
    )
    connects = pick(sc="connect", fam="inet", raddr="127.0.0.1", rport=port4)
    assert len(connects) == 30
    assert all(e["dir"] == "out" and e["ok"] is True and e["rc"] == 0 for e in connects)
    accepts = pick(sc="accept4", fam="inet", raddr="127.0.0.1")
    assert len(accepts) == 30
    assert all(e["dir"] == "in" and e["ok"] is True and e["rport"] > 1024 for e in accepts)

    # TCP over ::1: bind, 10 connects and accepts; 10 connects to port 1 that fail with
    # EINPROGRESS (-115: the socket has a 10 ms timeout, so it is non-blocking)
    [bind6] = pick(sc="bind", fam="inet6")
    assert (bind6["dir"], bind6["laddr"], bind6["lport"]) == ("bind", "::1", 0)
    good6 = pick(sc="connect", fam="inet6", raddr="::1", rport=port6)
    assert len(good6) == 10 and all(e["ok"] is True for e in good6)
    accepts6 = pick(sc="accept4", fam="inet6", raddr="::1")
    assert len(accepts6) == 10 and all(e["dir"] == "in" for e in accepts6)
    refused = pick(sc="connect", fam="inet6", raddr="::1", rport=1)
    assert len(refused) == 10
    assert all(e["ok"] is False and e["rc"] == -115 for e in refused)

    # UDP "connects" to 127.0.0.1:53
    dns = pick(sc="connect", fam="inet", raddr="127.0.0.1", rport=53)
    assert len(dns) == 10 and all(e["ok"] is True for e in dns)

    # AF_UNIX: the workload's own connect, and the helpers' (syslog, nscd, dbus, userdb)
    [demo] = pick(path="/run/agent-fixture-nonexistent.sock")
    assert (demo["fam"], demo["dir"], demo["ok"], demo["rc"]) == ("unix", "out", False, -2)
    unix = Counter((e["comm"], e["path"]) for e in net if e.get("fam") == "unix")
    assert unix == {
        ("python3", "/run/agent-fixture-nonexistent.sock"): 1,
        ("su", "/dev/log"): 8,
        ("su", "/var/run/nscd/socket"): 6,
        ("su", "/run/dbus/system_bus_socket"): 1,
        ("su", "/run/systemd/userdb/io.systemd.Multiplexer"): 1,
        ("setpriv", "/var/run/nscd/socket"): 4,
        ("useradd", "/var/run/nscd/socket"): 4,
        ("useradd", "/dev/log"): 2,
        ("userdel", "/dev/log"): 3,
    }
    assert all(e["ok"] is False and e["rc"] == -2 for e in net if e.get("fam") == "unix")
    assert all("fam" in e for e in net)
    assert len(pick(comm="python3")) == 1 + 30 + 30 + 1 + 10 + 10 + 10 + 1 + 10


@pytest.mark.parametrize("log", DEVICE_LOGS)
def test_su_pam_records(results: dict[Path, ParseResult], log: str) -> None:
    pam = [e for e in events_of(results, log) if e["t"] == "auth" and e["rt"] != "SYSCALL"]
    session = "pam_env,pam_env,pam_mail,pam_limits,pam_permit,pam_unix"
    assert [(e["rt"], e["op"], e["grantors"], e["acct"], e["res"]) for e in pam] == [
        ("USER_AUTH", "PAM:authentication", "pam_rootok", "nobody", "success"),
        ("USER_ACCT", "PAM:accounting", "pam_permit", "nobody", "success"),
        ("CRED_ACQ", "PAM:setcred", "pam_rootok", "nobody", "success"),
        ("USER_START", "PAM:session_open", session, "nobody", "success"),
        ("USER_END", "PAM:session_close", session, "nobody", "success"),
        ("CRED_DISP", "PAM:setcred", "pam_rootok", "nobody", "success"),
        # nobody's su to root, refused: no password on stdin
        ("USER_AUTH", "PAM:authentication", None, "root", "failed"),
    ]
    for event in pam:
        assert event["exe"] == "/usr/bin/su"
        assert (event["auid"], event["ses"]) == (4242, FACTS[log][2])
        assert event["uid"] == (65534 if event["res"] == "failed" else 0)
        assert event["host"] is None and event["addr"] is None and event["term"] is None
        assert "sc" not in event  # user-space records: no SYSCALL


@pytest.mark.parametrize("log", DEVICE_LOGS)
def test_login_sets_the_login_uid(results: dict[Path, ParseResult], log: str) -> None:
    """type=LOGIN ... old-auid=4294967295 auid=4242 tty=(none) old-ses=4294967295 ses=4 res=1,
    with the SYSCALL (write to /proc/self/loginuid) of the same event."""
    [login] = [e for e in events_of(results, log) if "old_auid" in e]
    assert login["t"] == "auth" and login["rt"] == "SYSCALL"
    assert login["auid"] == 4242 and login["old_auid"] is None
    assert login["old_ses"] is None and login["uid"] == 0
    assert login["ses"] == FACTS[log][2]
    assert login["res"] == "success"
    assert (login["sc"], login["comm"], login["exe"]) == ("write", "bash", "/usr/bin/bash")


@pytest.mark.parametrize("log", DEVICE_LOGS)
def test_account_records(results: dict[Path, ParseResult], log: str) -> None:
    account = [e for e in events_of(results, log) if e["t"] == "account"]
    got = [(e["rt"], e["op"], e.get("acct"), e.get("id"), e["exe"]) for e in account]
    assert got == [
        ("ADD_GROUP", "adding", "agent-fixture", None, "/usr/sbin/useradd"),
        ("ADD_USER", "adding", None, 1001, "/usr/sbin/useradd"),
        ("DEL_USER", "deleting", None, 1001, "/usr/sbin/userdel"),
        ("DEL_GROUP", "deleting", "agent-fixture", None, "/usr/sbin/userdel"),
        ("DEL_GROUP", "deleting", "agent-fixture", None, "/usr/sbin/userdel"),
    ]
    assert all(e["res"] == "success" and e["auid"] == 4242 for e in account)


@pytest.mark.parametrize("log", DEVICE_LOGS)
def test_audit_configuration_and_daemon(results: dict[Path, ParseResult], log: str) -> None:
    cfg = [e for e in events_of(results, log) if e["t"] == "auditcfg"]
    # auditd registering (op=set audit_pid), when the log has it (see registered())
    own = [e for e in cfg if e.get("op") == "set"]
    assert len(own) == registered(log)
    assert all((e["sc"], e["comm"]) == ("sendto", "auditd") for e in own)
    changes = [e for e in cfg if e["rt"] == "SYSCALL" and e not in own]
    assert [e["rt"] for e in cfg if e not in own] == (
        ["DAEMON_START"] + ["SYSCALL"] * 8 + ["DAEMON_END"]
    )
    assert [e["op"] for e in changes] == ["add_rule"] * 4 + ["remove_rule"] * 4
    for event in changes:
        # CONFIG_CHANGE's key wins over its SYSCALL's key=(null)
        assert event["key"] == "agent-fixture" and event["list"] == 4
        assert event["res"] == "success"
        assert event["auid"] is None and event["ses"] is None
        assert (event["sc"], event["comm"]) == ("sendto", "auditctl")
    start, end = cfg[0], cfg[-1]
    assert (start["op"], start["res"], start["auid"], start["uid"]) == ("start", "success", None, 0)
    assert (end["op"], end["res"], end["uid"]) == ("terminate", "success", 0)
    assert "sc" not in start and "sc" not in end


# ---------------------------------------------------------------------------------------------
# RAW and ENRICHED, chunking (any log)


def _normalized(event: Event) -> Event:
    """The event without what differs between the two runs: time, serial, process and session
    ids, the ephemeral TCP ports, and auditd's own pid, buffer address and command line (its
    private configuration directory) in its SYSCALL and PROCTITLE."""
    out = {k: v for k, v in event.items() if k not in ("ts", "sn", "pid", "ppid", "ses")}
    if out.get("rport") not in (None, 1, 53):
        out["rport"] = "ephemeral"
    if "recs" in out:
        out["recs"] = [
            {**r, "f": {k: v for k, v in r["f"].items() if k not in ("pid", "a1", "proctitle")}}
            for r in out["recs"]
        ]
    return out


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _comparable(events: list[Event]) -> Counter[Any]:
    """auditd's own registration event is left out: whether the kernel's CONFIG_CHANGE for it
    reaches the log depends on timing (see registered())."""
    return Counter(_frozen(_normalized(e)) for e in events if e.get("comm") != "auditd")


@pytest.mark.parametrize(
    "pair",
    [LOGS[i : i + 2] for i in range(0, len(LOGS), 2)],
    ids=lambda pair: _log_id(pair[0]).split("/")[0],
)
def test_raw_and_enriched_give_the_same_events(
    results: dict[Path, ParseResult], pair: list[Path]
) -> None:
    raw_log, enriched_log = pair
    raw = _comparable(results[raw_log][0])
    enriched = _comparable(results[enriched_log][0])
    assert sum(raw.values()) == sum(enriched.values()) > 0
    assert raw == enriched


CHUNKS = [(RAW, 1), (RAW, 7), (RAW, 4096), (ENRICHED, 7), (ENRICHED, 4096)]


@pytest.mark.parametrize(
    ("log", "chunk"),
    [(root / name, chunk) for root in sorted({p.parent for p in LOGS}) for name, chunk in CHUNKS],
    ids=lambda value: _log_id(value) if isinstance(value, Path) else str(value),
)
def test_chunked_feeding_gives_the_same_events(
    audit_impl: Parse, results: dict[Path, ParseResult], log: Path, chunk: int
) -> None:
    events, stats = audit_impl(log.read_bytes(), chunk=chunk)
    whole_events, whole_stats = results[log]
    assert len(events) == len(whole_events) > 0
    assert events == whole_events
    assert stats == whole_stats
