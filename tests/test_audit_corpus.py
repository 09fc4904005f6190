"""The device logs of the shared corpus, parsed by both implementations (`audit_impl`).

../shared/corpus/device-raw.log and device-enriched.log were written while
device-workload.sh ran once with auditd's RAW and once with its ENRICHED format. Every
expectation below is a literal, taken from the workload script and checked against the log
text (grep), never computed by the code under test.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

Event = dict[str, Any]
ParseResult = tuple[list[Event], dict[str, int]]
Parse = Callable[..., ParseResult]

LOGS = ("device-raw.log", "device-enriched.log")

# Per log: (bytes, the IPv4 listener's port, the IPv6 listener's port, the login session).
# The ports are the ephemeral ones the workload's listeners got: saddr=02009D6B7F000001
# (40299) and 0A00BFE7...01 (49127) in the RAW log, 0200D261... (53857) and 0A009735...
# (38709) in the ENRICHED one; the LOGIN record gave the workload ses=3, then ses=4.
FACTS = {
    "device-raw.log": (1_513_224, 40299, 49127, 3),
    "device-enriched.log": (1_801_199, 53857, 38709, 4),
}

ECHO_REST = ["arg with spaces", 'quote"inside']
PRINTF_ARGS = ["/usr/bin/printf", "%s\\n", "tab\targ", "newline\narg"]


@pytest.fixture(scope="module")
def results(audit_impl: Parse, corpus_dir: Path) -> dict[str, ParseResult]:
    """Each device log parsed once per implementation."""
    return {name: audit_impl((corpus_dir / name).read_bytes()) for name in LOGS}


def events_of(results: dict[str, ParseResult], log: str) -> list[Event]:
    return results[log][0]


# ---------------------------------------------------------------------------------------------
# counts


@pytest.mark.parametrize("log", LOGS)
def test_event_and_line_counts(results: dict[str, ParseResult], log: str) -> None:
    events, stats = results[log]
    size = FACTS[log][0]
    assert len(events) == 1557
    assert stats == {
        "bytes": size,
        "lines": 8973,
        "records": 8973,
        "events": 1557,
        "malformed": 0,
        "long_lines": 0,
        "truncated": 0,
        "forced": 0,
        "timeouts": 0,
        "duplicates": 0,
        "gaps": 0,
        "batches": 2,
    }
    # 1,544 SYSCALL records, one per syscall event; the other 13 events are user-space
    # (6 PAM records from su, 5 account records) and daemon records (start, end).
    assert sum(1 for e in events if e["rt"] == "SYSCALL") == 1544
    assert Counter(e["t"] for e in events) == {
        "exec": 1226,
        "net": 308,
        "auditcfg": 10,
        "auth": 7,
        "account": 5,
        "audit": 1,
    }


@pytest.mark.parametrize("log", LOGS)
def test_every_event_has_the_common_keys(results: dict[str, ParseResult], log: str) -> None:
    low, high = 1_767_225_600_000, 1_830_297_600_000  # 2026-01-01 .. 2028-01-01 UTC, in ms
    for event in events_of(results, log):
        assert event["t"] in {"exec", "net", "auth", "account", "auditcfg", "audit"}
        assert isinstance(event["ts"], int) and low <= event["ts"] < high
        assert isinstance(event["sn"], int) and event["sn"] > 0
        assert isinstance(event["rt"], str) and event["rt"]
        assert "node" not in event  # the logs have no node= prefix
        assert "trunc" not in event


# ---------------------------------------------------------------------------------------------
# exec


def expected_argvs() -> Counter[tuple[str, ...]]:
    """Every program device-workload.sh ran, as its argv (some via bash's pipeline and
    command substitution: seq, head, tr; su runs `sh -c true`)."""
    want: Counter[tuple[str, ...]] = Counter()
    want[("/bin/bash", "/srv/agent-demo/workload.sh")] = 1
    want[("seq", "1", "200")] = 1
    for n in range(1, 201):
        want[("/bin/echo", f"héllo wörld {n}", *ECHO_REST)] = 1
    for argv in (("/bin/true",), ("ls", "/"), ("grep", "-q", "y"), ("sh", "-c", "exit 3")):
        want[argv] = 200
    want[("head", "-c", "9000", "/dev/zero")] = 1
    want[("tr", "\\0", "A")] = 1
    want[("/bin/echo", "A" * 9000)] = 1
    want[("seq", "1", "400")] = 1
    want[("/bin/echo", *(str(i) for i in range(1, 401)))] = 1
    want[("env", "-i", "PATH=/usr/bin", *PRINTF_ARGS)] = 1
    want[tuple(PRINTF_ARGS)] = 1
    want[("su", "-s", "/bin/sh", "-c", "true", "nobody")] = 1
    want[("sh", "-c", "true")] = 1
    want[("useradd", "-M", "-s", "/usr/sbin/nologin", "demo-user")] = 1
    want[("userdel", "demo-user")] = 1
    want[("/usr/bin/python3", "-")] = 1
    return want


@pytest.mark.parametrize("log", LOGS)
def test_exec_argv_is_what_the_workload_ran(results: dict[str, ParseResult], log: str) -> None:
    execs = [e for e in events_of(results, log) if e["t"] == "exec"]
    with_argv = [e for e in execs if "argv" in e]
    assert Counter(tuple(e["argv"]) for e in with_argv) == expected_argvs()
    for event in with_argv:
        assert event["argc"] == len(event["argv"])
        assert all(isinstance(arg, str) for arg in event["argv"])
        assert event["ok"] is True and event["rc"] == 0
        assert event["sc"] == "execve" and event["arch"] == "x86_64"
        assert event["key"] == "agent-demo" and event["auid"] == 4242
        assert event["paths"] and "title" not in event

    many = [e for e in with_argv if e["argc"] == 401]
    assert len(many) == 1
    assert many[0]["argv"] == ["/bin/echo", *(str(i) for i in range(1, 401))]

    # the 9000-byte argument is logged as a1_len=18000 with a1[k] hex chunks
    long_arg = [e for e in with_argv if e["argv"][0] == "/bin/echo" and len(e["argv"][1]) > 100]
    assert len(long_arg) == 1
    assert long_arg[0]["argv"] == ["/bin/echo", "A" * 9000]

    echo = [e for e in with_argv if e["argv"][1:2] == ["héllo wörld 7"]]
    assert echo[0]["argv"] == ["/bin/echo", "héllo wörld 7", "arg with spaces", 'quote"inside']
    assert echo[0]["cwd"] == "/srv/agent-demo"


@pytest.mark.parametrize("log", LOGS)
def test_failed_execs_have_no_argv(results: dict[str, ParseResult], log: str) -> None:
    """/nonexistent/cmd never runs: bash's execve fails (ENOENT) and the kernel writes no
    EXECVE record, so the event is typed by its syscall and has no argv. useradd and userdel
    also try two helpers that are not installed."""
    failed = [e for e in events_of(results, log) if e["t"] == "exec" and "argv" not in e]
    assert len(failed) == 212
    for event in failed:
        assert event["sc"] == "execve" and event["ok"] is False and event["rc"] == -2
        assert "argc" not in event
    tried = Counter((e["comm"], e["paths"][0]["n"]) for e in failed)
    assert tried == {
        ("workload.sh", "/nonexistent/cmd"): 200,
        ("useradd", "/usr/sbin/nscd"): 4,
        ("userdel", "/usr/sbin/nscd"): 4,
        ("useradd", "/usr/sbin/sss_cache"): 2,
        ("userdel", "/usr/sbin/sss_cache"): 2,
    }
    nonexistent = next(e for e in failed if e["comm"] == "workload.sh")
    assert nonexistent["paths"] == [{"n": "/nonexistent/cmd", "nt": "UNKNOWN"}]
    assert nonexistent["title"] == ["/bin/bash", "/srv/agent-demo/workload.sh"]
    ran = [e["argv"][0] for e in events_of(results, log) if "argv" in e]
    assert "/nonexistent/cmd" not in ran


# ---------------------------------------------------------------------------------------------
# net


@pytest.mark.parametrize("log", LOGS)
def test_net_events(results: dict[str, ParseResult], log: str) -> None:
    _, port4, port6, _ = FACTS[log]
    net = [e for e in events_of(results, log) if e["t"] == "net"]
    assert len(net) == 308

    def pick(**want: Any) -> list[Event]:
        return [e for e in net if all(e.get(k) == v for k, v in want.items())]

    # TCP over 127.0.0.1: the listener binds port 0, 100 connects, 100 accepts
    [bind4] = pick(sc="bind", fam="inet")
    assert (bind4["dir"], bind4["laddr"], bind4["lport"], bind4["ok"]) == (
        "bind",
        "127.0.0.1",
        0,
        True,
    )
    connects = pick(sc="connect", fam="inet", raddr="127.0.0.1", rport=port4)
    assert len(connects) == 100
    assert all(e["dir"] == "out" and e["ok"] is True and e["rc"] == 0 for e in connects)
    accepts = pick(sc="accept4", fam="inet", raddr="127.0.0.1")
    assert len(accepts) == 100
    assert all(e["dir"] == "in" and e["ok"] is True and e["rport"] > 1024 for e in accepts)

    # TCP over ::1: bind, 20 connects and accepts; 20 connects to port 1 that fail with
    # EINPROGRESS (-115: the socket has a 10 ms timeout, so it is non-blocking)
    [bind6] = pick(sc="bind", fam="inet6")
    assert (bind6["dir"], bind6["laddr"], bind6["lport"]) == ("bind", "::1", 0)
    good6 = pick(sc="connect", fam="inet6", raddr="::1", rport=port6)
    assert len(good6) == 20 and all(e["ok"] is True for e in good6)
    accepts6 = pick(sc="accept4", fam="inet6", raddr="::1")
    assert len(accepts6) == 20 and all(e["dir"] == "in" for e in accepts6)
    refused = pick(sc="connect", fam="inet6", raddr="::1", rport=1)
    assert len(refused) == 20
    assert all(e["ok"] is False and e["rc"] == -115 for e in refused)

    # UDP "connects" to 127.0.0.1:53
    dns = pick(sc="connect", fam="inet", raddr="127.0.0.1", rport=53)
    assert len(dns) == 20 and all(e["ok"] is True for e in dns)

    # AF_UNIX: the workload's own connect, and the helpers' (syslog, nscd, dbus, userdb)
    [demo] = pick(path="/run/demo-nonexistent.sock")
    assert (demo["fam"], demo["dir"], demo["ok"], demo["rc"]) == ("unix", "out", False, -2)
    unix = Counter((e["comm"], e["path"]) for e in net if e.get("fam") == "unix")
    assert unix == {
        ("python3", "/run/demo-nonexistent.sock"): 1,
        ("python3", "/var/run/nscd/socket"): 2,
        ("workload.sh", "/var/run/nscd/socket"): 2,
        ("su", "/var/run/nscd/socket"): 4,
        ("su", "/dev/log"): 6,
        ("su", "/run/dbus/system_bus_socket"): 1,
        ("su", "/run/systemd/userdb/io.systemd.Multiplexer"): 1,
        ("useradd", "/var/run/nscd/socket"): 4,
        ("useradd", "/dev/log"): 2,
        ("userdel", "/dev/log"): 3,
    }
    assert all(e["ok"] is False and e["rc"] == -2 for e in net if e.get("fam") == "unix")
    # every net event of this log has its address
    assert all("fam" in e for e in net)
    assert len(pick(comm="python3")) == 100 + 100 + 1 + 20 + 20 + 20 + 1 + 20 + 1 + 2


# ---------------------------------------------------------------------------------------------
# auth, account, auditcfg


@pytest.mark.parametrize("log", LOGS)
def test_su_pam_records(results: dict[str, ParseResult], log: str) -> None:
    pam = [e for e in events_of(results, log) if e["t"] == "auth" and e["rt"] != "SYSCALL"]
    assert [(e["rt"], e["op"], e["grantors"]) for e in pam] == [
        ("USER_AUTH", "PAM:authentication", "pam_rootok"),
        ("USER_ACCT", "PAM:accounting", "pam_permit"),
        ("CRED_ACQ", "PAM:setcred", "pam_rootok"),
        (
            "USER_START",
            "PAM:session_open",
            "pam_env,pam_env,pam_mail,pam_limits,pam_permit,pam_unix",
        ),
        (
            "USER_END",
            "PAM:session_close",
            "pam_env,pam_env,pam_mail,pam_limits,pam_permit,pam_unix",
        ),
        ("CRED_DISP", "PAM:setcred", "pam_rootok"),
    ]
    for event in pam:
        assert event["acct"] == "nobody" and event["res"] == "success"
        assert event["exe"] == "/usr/bin/su"
        assert (event["uid"], event["auid"], event["ses"]) == (0, 4242, FACTS[log][3])
        assert event["host"] is None and event["addr"] is None and event["term"] is None
        assert "sc" not in event  # user-space records: no SYSCALL


@pytest.mark.parametrize("log", LOGS)
def test_login_sets_the_login_uid(results: dict[str, ParseResult], log: str) -> None:
    """type=LOGIN ... old-auid=4294967295 auid=4242 tty=(none) old-ses=4294967295 ses=3 res=1,
    with the SYSCALL (write to /proc/self/loginuid) of the same event."""
    [login] = [e for e in events_of(results, log) if "old_auid" in e]
    assert login["t"] == "auth" and login["rt"] == "SYSCALL"
    assert login["auid"] == 4242 and login["old_auid"] is None
    assert login["old_ses"] is None and login["uid"] == 0
    assert login["ses"] == FACTS[log][3]
    assert login["res"] == "success"
    assert (login["sc"], login["comm"], login["exe"]) == ("write", "bash", "/usr/bin/bash")


@pytest.mark.parametrize("log", LOGS)
def test_account_records(results: dict[str, ParseResult], log: str) -> None:
    account = [e for e in events_of(results, log) if e["t"] == "account"]
    got = [(e["rt"], e["op"], e.get("acct"), e.get("id"), e["exe"]) for e in account]
    assert got == [
        ("ADD_GROUP", "adding", "demo-user", None, "/usr/sbin/useradd"),
        ("ADD_USER", "adding", None, 1001, "/usr/sbin/useradd"),
        ("DEL_USER", "deleting", None, 1001, "/usr/sbin/userdel"),
        ("DEL_GROUP", "deleting", "demo-user", None, "/usr/sbin/userdel"),
        ("DEL_GROUP", "deleting", "demo-user", None, "/usr/sbin/userdel"),
    ]
    assert all(e["res"] == "success" and e["auid"] == 4242 for e in account)
    assert all("acct" not in e for e in account if e["rt"] in ("ADD_USER", "DEL_USER"))


@pytest.mark.parametrize("log", LOGS)
def test_audit_configuration_and_daemon(results: dict[str, ParseResult], log: str) -> None:
    cfg = [e for e in events_of(results, log) if e["t"] == "auditcfg"]
    assert [e["rt"] for e in cfg] == ["DAEMON_START"] + ["SYSCALL"] * 8 + ["DAEMON_END"]
    changes = cfg[1:9]
    assert [e["op"] for e in changes] == ["add_rule"] * 4 + ["remove_rule"] * 4
    for event in changes:
        # CONFIG_CHANGE's key wins over its SYSCALL's key=(null)
        assert event["key"] == "agent-demo" and event["list"] == 4
        assert event["res"] == "success"
        assert event["auid"] is None and event["ses"] is None
        assert (event["sc"], event["comm"]) == ("sendto", "auditctl")
    start, end = cfg[0], cfg[-1]
    assert (start["op"], start["res"], start["auid"], start["uid"]) == ("start", "success", None, 0)
    assert (end["op"], end["res"], end["auid"], end["uid"]) == ("terminate", "success", 0, 0)
    assert "sc" not in start and "sc" not in end


@pytest.mark.parametrize("log", LOGS)
def test_auditd_own_syscall_is_a_generic_event(results: dict[str, ParseResult], log: str) -> None:
    [audit] = [e for e in events_of(results, log) if e["t"] == "audit"]
    assert (audit["sc"], audit["comm"], audit["exe"]) == ("sendto", "auditd", "/usr/sbin/auditd")
    assert [r["type"] for r in audit["recs"]] == ["SYSCALL", "PROCTITLE"]
    syscall, title = audit["recs"]
    assert syscall["f"]["arch"] == "c000003e" and syscall["f"]["auid"] is None
    assert syscall["f"]["key"] is None and syscall["f"]["tty"] is None
    assert title["f"] == {"proctitle": "auditd\x00-n"}
    assert "text" not in syscall and "text" not in title


# ---------------------------------------------------------------------------------------------
# RAW and ENRICHED


def _normalized(event: Event) -> Event:
    """The event without what differs between the two runs: time, serial, process and session
    ids, the ephemeral TCP ports, and auditd's own pid and buffer address in its SYSCALL."""
    out = {k: v for k, v in event.items() if k not in ("ts", "sn", "pid", "ppid", "ses")}
    if out.get("rport") not in (None, 1, 53):
        out["rport"] = "ephemeral"
    if "recs" in out:
        out["recs"] = [
            {**r, "f": {k: v for k, v in r["f"].items() if k not in ("pid", "a1")}}
            for r in out["recs"]
        ]
    return out


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def test_raw_and_enriched_give_the_same_events(results: dict[str, ParseResult]) -> None:
    raw = Counter(_frozen(_normalized(e)) for e in events_of(results, "device-raw.log"))
    enriched = Counter(_frozen(_normalized(e)) for e in events_of(results, "device-enriched.log"))
    assert sum(raw.values()) == sum(enriched.values()) == 1557
    assert raw == enriched


# ---------------------------------------------------------------------------------------------
# chunking


@pytest.mark.parametrize(
    ("log", "chunk"),
    [
        ("device-raw.log", 1),
        ("device-raw.log", 7),
        ("device-raw.log", 4096),
        ("device-enriched.log", 7),
        ("device-enriched.log", 4096),
    ],
)
def test_chunked_feeding_gives_the_same_events(
    audit_impl: Parse, corpus_dir: Path, results: dict[str, ParseResult], log: str, chunk: int
) -> None:
    events, stats = audit_impl((corpus_dir / log).read_bytes(), chunk=chunk)
    whole_events, whole_stats = results[log]
    assert len(events) == 1557
    assert events == whole_events
    assert stats == whole_stats
