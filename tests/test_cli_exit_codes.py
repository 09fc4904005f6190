"""Every exit code docs/operations.md documents ("Exit codes"), provoked for real: each row
of the table (verb, code) has at least one case here that makes that verb return that code,
every case is a row of the table, and every verb of src/agent/cli.py has a row. A verb whose
code changes, a code added without its row, a verb added without its rows: each fails here.

The cases of `run` and `status` start `micro-agent run` with every collector disabled (no audit,
no proc connector), its status file in a runtime directory as under the unit."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.config import COLLECTORS

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "operations.md"
AUDIT_LOG = REPO / "tests" / "fixtures" / "audit" / "device-raw.log"
AGENT = [sys.executable, "-m", "agent.cli"]
EVERY_VERB = "*"  # a row of the table that holds for every verb (a usage error)
ALL_OFF = {f"{name}_Disabled": True for name in COLLECTORS}

ROW = re.compile(r"^\| `([a-z-]+|\*)` \| (\d+) \|")


def documented() -> set[tuple[str, int]]:
    """(verb, code) of every row of the doc's exit code table."""
    text = DOC.read_text()
    section = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = {(m[1], int(m[2])) for m in map(ROW.match, section.splitlines()) if m}
    assert rows, "docs/operations.md: no exit code table under '## Exit codes'"
    return rows


def verbs() -> set[str]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("micro-agent has no verbs")


def agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


# -- a running agent, for run and status ----------------------------------------------------------

def start(tmp: Path, data: str = "data") -> tuple[subprocess.Popen[str], Path, Path]:
    config = tmp / "config.json"
    config.write_text(json.dumps(ALL_OFF))
    data_dir, runtime = tmp / data, tmp / "run"
    status = runtime / "status.json"
    status.unlink(missing_ok=True)
    proc = subprocess.Popen([*AGENT, "run", "--data-dir", str(data_dir), "--runtime-dir",
                             str(runtime), "--config", str(config)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not status.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "micro-agent run did not start within 30 s"
        time.sleep(0.1)
    return proc, data_dir, runtime


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    return proc.returncode


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("micro-agent run needs root")


# -- the cases: (verb, code) -> how to provoke it ---------------------------------------------------

def parse_audit_ok(tmp: Path) -> int:
    return agent("parse-audit", str(AUDIT_LOG)).returncode


def parse_audit_missing(tmp: Path) -> int:
    return agent("parse-audit", str(tmp / "absent.log")).returncode


def parse_audit_directory(tmp: Path) -> int:
    return agent("parse-audit", str(tmp)).returncode


def batch_file(tmp: Path) -> Path:
    out = subprocess.run([*AGENT, "parse-audit", "--format", "msgpack", str(AUDIT_LOG)],
                         capture_output=True, check=True)
    path = tmp / "batches" / "audit.msgpack"
    path.parent.mkdir()
    path.write_bytes(out.stdout)
    return path


def decode_ok(tmp: Path) -> int:
    done = agent("decode", str(batch_file(tmp).parent))
    assert done.stdout.count("\n") > 100  # the fixture's events were printed
    return done.returncode


def decode_torn(tmp: Path) -> int:
    path = batch_file(tmp)
    path.write_bytes(path.read_bytes()[:-1])
    return agent("decode", str(path)).returncode


def decode_missing(tmp: Path) -> int:
    return agent("decode", str(tmp / "absent.batch")).returncode


def collect_ok(tmp: Path) -> int:
    done = agent("collect", "Heartbeat", "--config", str(tmp / "absent.json"))
    assert '"t":"heartbeat"' in done.stdout
    return done.returncode


def collect_unknown(tmp: Path) -> int:
    return agent("collect", "FileSystem").returncode  # a collector name, but not collectable


def status_never_ran(tmp: Path) -> int:
    return agent("status", "--data-dir", str(tmp / "data")).returncode


def status_unreadable(tmp: Path) -> int:
    (tmp / "data").mkdir()
    (tmp / "data" / "status.json").write_text('{"running": tru')  # torn
    return agent("status", "--data-dir", str(tmp / "data")).returncode


def status_running(tmp: Path) -> int:
    need_root()
    proc, data_dir, _ = start(tmp)
    try:
        # From the data directory alone (DATA/status.json links to the runtime directory).
        plain = agent("status", "--data-dir", str(data_dir))
        assert "running (pid" in plain.stdout
        as_json = agent("status", "--json", "--data-dir", str(data_dir))
        assert as_json.returncode == plain.returncode
        return plain.returncode
    finally:
        assert stop(proc) == 0


def status_stopped(tmp: Path) -> int:
    need_root()
    proc, data_dir, _ = start(tmp)
    assert stop(proc) == 0
    done = agent("status", "--data-dir", str(data_dir))
    assert "not running" in done.stdout
    return done.returncode


def status_runtime_gone(tmp: Path) -> int:
    need_root()
    proc, data_dir, runtime = start(tmp)
    assert stop(proc) == 0
    (runtime / "status.json").unlink()  # as after a reboot: /run is empty
    runtime.rmdir()
    done = agent("status", "--data-dir", str(data_dir))
    assert "is gone" in done.stdout
    return done.returncode


def run_stopped(tmp: Path) -> int:
    need_root()
    proc, _, _ = start(tmp)
    return stop(proc)


def run_interrupted(tmp: Path) -> int:
    need_root()
    proc, _, _ = start(tmp)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    return proc.returncode


def run_second_agent(tmp: Path) -> int:
    need_root()
    proc, data_dir, _ = start(tmp)
    try:
        done = agent("run", "--data-dir", str(data_dir), "--runtime-dir", str(tmp / "run2"),
                     "--config", str(tmp / "config.json"))
        assert "another micro-agent is running" in done.stderr
        return done.returncode
    finally:
        assert stop(proc) == 0


def run_bad_identity(tmp: Path) -> int:
    done = agent("run", "--data-dir", str(tmp / "data"), "--connection-string-file",
                 str(tmp / "absent"))
    assert "does not exist" in done.stderr
    return done.returncode


def run_bad_data_dir(tmp: Path) -> int:
    (tmp / "file").write_text("")
    return agent("run", "--data-dir", str(tmp / "file")).returncode


def run_bad_runtime_dir(tmp: Path) -> int:
    (tmp / "file").write_text("")
    return agent("run", "--data-dir", str(tmp / "data"), "--runtime-dir",
                 str(tmp / "file" / "run")).returncode


def audit_restore_nothing_recorded(tmp: Path) -> int:
    done = agent("audit-restore", "--data-dir", str(tmp / "data"))
    assert "nothing recorded" in done.stdout
    return done.returncode


def write_record(data_dir: Path, **changed: int) -> None:
    """A record as the agent writes it before its first change: the kernel's audit status as
    it is now, with the fields given changed."""
    from agent.collectors.audit_state import FORMAT, RECORD_NAME, boot_id
    from agent.native.audit_netlink import STATUS_FIELDS, AuditNetlink, AuditNetlinkOptions

    options = AuditNetlinkOptions(take_ownership=False, exec_rules=False, net_rules=False)
    with AuditNetlink(options) as nl:
        found = nl.found_status
    assert found is not None
    if found["pid"] != 0:
        pytest.skip(f"audit is owned by pid {found['pid']}: a restore would not touch it")
    status = {name: int(found[name]) for name in STATUS_FIELDS} | changed
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / RECORD_NAME).write_text(json.dumps(
        {"format": FORMAT, "boot_id": boot_id(), "agent_pid": 1, "written": int(time.time()),
         "status": status}))


def audit_restore_refused(tmp: Path) -> int:
    need_root()
    # AUDIT_FAIL_* is 0, 1 or 2: the kernel answers EINVAL to 7 (and 2 would panic on a loss).
    write_record(tmp / "data", failure=7)
    done = agent("audit-restore", "--data-dir", str(tmp / "data"))
    assert (tmp / "data" / "audit-state.json").exists()  # kept for another try
    return done.returncode


def audit_restore_unreadable(tmp: Path) -> int:
    (tmp / "data").mkdir()
    (tmp / "data" / "audit-state.json").write_text('{"format": 1, "stat')  # torn
    done = agent("audit-restore", "--data-dir", str(tmp / "data"))
    assert "cannot read the record" in done.stderr
    return done.returncode


def audit_restore_agent_running(tmp: Path) -> int:
    need_root()
    proc, data_dir, _ = start(tmp)
    try:
        (data_dir / "audit-state.json").write_text("{}")  # never read: the lock refuses first
        done = agent("audit-restore", "--data-dir", str(data_dir))
        assert "an agent is running" in done.stderr
        return done.returncode
    finally:
        assert stop(proc) == 0


def verify_batches(tmp: Path, *seqs: int) -> Path:
    from agent.envelope import Identity, wrap

    ident = Identity(agent="a", ver="0", dev="d", mod="m")
    out = tmp / "delivered"
    out.mkdir()
    for seq in seqs:
        body = wrap(b"\x91\x81\xa1t\xa4exec", ident, seq=seq, ts=1, prio="High", coll=["Process"],
                    drops={})
        (out / f"{seq:020d}-high.msgpack").write_bytes(body)
    return out


def verify_complete(tmp: Path) -> int:
    done = agent("verify", str(verify_batches(tmp, 0, 1, 2)))
    assert "verdict: complete" in done.stdout
    return done.returncode


def verify_gap(tmp: Path) -> int:
    done = agent("verify", str(verify_batches(tmp, 0, 2)))
    assert "missing seq: 1 " in done.stdout
    return done.returncode


def verify_missing_input(tmp: Path) -> int:
    done = agent("verify", str(tmp / "absent"))
    assert "no such file or directory" in done.stderr
    return done.returncode


def usage_error(tmp: Path) -> int:
    codes = {agent(verb, "--no-such-option").returncode for verb in sorted(verbs())}
    codes.add(agent().returncode)  # no verb at all
    assert len(codes) == 1, codes
    return codes.pop()


CASES: dict[tuple[str, int], list[Callable[[Path], int]]] = {
    ("parse-audit", 0): [parse_audit_ok],
    ("parse-audit", 2): [parse_audit_missing, parse_audit_directory],
    ("decode", 0): [decode_ok],
    ("decode", 1): [decode_torn, decode_missing],
    ("collect", 0): [collect_ok],
    ("collect", 2): [collect_unknown],
    ("status", 0): [status_running],
    ("status", 1): [status_never_ran, status_unreadable],
    ("status", 3): [status_stopped, status_runtime_gone],
    ("run", 0): [run_stopped, run_interrupted],
    ("run", 2): [run_second_agent, run_bad_identity, run_bad_data_dir, run_bad_runtime_dir],
    ("verify", 0): [verify_complete],
    ("verify", 1): [verify_gap],
    ("verify", 2): [verify_missing_input],
    ("audit-restore", 0): [audit_restore_nothing_recorded],
    ("audit-restore", 1): [audit_restore_refused],
    ("audit-restore", 2): [audit_restore_unreadable],
    ("audit-restore", 3): [audit_restore_agent_running],
    (EVERY_VERB, 2): [usage_error],
}
LIVE = {status_running, status_stopped, status_runtime_gone, run_stopped, run_interrupted,
        run_second_agent, audit_restore_refused, audit_restore_agent_running}


def test_every_verb_has_rows() -> None:
    rows = documented()
    assert verbs() - {verb for verb, _ in rows} == set()
    assert {verb for verb, _ in rows} - verbs() - {EVERY_VERB} == set()  # no row of a gone verb


def test_every_row_is_provoked_and_every_case_documented() -> None:
    assert documented() == set(CASES)


@pytest.mark.parametrize(
    ("verb", "code", "case"),
    [pytest.param(verb, code, case, id=f"{verb}-{code}-{case.__name__}",
                  marks=[pytest.mark.root, pytest.mark.live] if case in LIVE else [])
     for (verb, code), cases in CASES.items() for case in cases],
)
def test_the_documented_code(verb: str, code: int, case: Callable[[Path], int],
                             tmp_path: Path) -> None:
    assert case(tmp_path) == code
