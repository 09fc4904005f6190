"""The kernel's audit state survives a kill -9 of the agent (issue 12, item 3).

`micro-agent run` is killed with SIGKILL at seeded random moments of its start-up and of its
shutdown, and right after each step that changes the kernel (the record written, each accepted
AUDIT_SET: the test-only AM_ANL_KILL_AFTER of native/audit_netlink.c). After every kill either
the record DATA/audit-state.json exists, or the kernel is exactly as before; then a restart and
a clean stop, or `micro-agent audit-restore`, must leave `auditctl -s` and `auditctl -l` as they
were before the first start, byte for byte. Excepted: the counters `lost`, `backlog` and
`backlog_wait_time_actual` (the kernel's, moving with every record), and `pid` when it names a
dead process (the kernel's stale registration of a killed owner, which it clears itself at its
next failed send; a restore leaves 0, which is what it stands for).

The baseline is made distinctive first (audit disabled, backlog_limit 321, backlog_wait_time
12345, rate_limit 0, failure 1, two foreign rules), so that every field the agent changes is
seen to come back; the machine's own state is put back afterwards.

Needs root and auditctl (Debian package auditd). Touches the kernel's audit state: run it
with nothing else using audit.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import skip_unless_ci
from kernel_audit import EXCLUSION_RULES, multicast_readers, pid_alive, release_audit_pid

from agent.collectors.audit_state import RECORD_NAME

pytestmark = [pytest.mark.live, pytest.mark.root]

AGENT = [sys.executable, "-m", "agent.cli"]
COUNTERS = ("lost", "backlog", "backlog_wait_time_actual")
FOREIGN_RULES = (
    ["-a", "always,exit", "-F", "arch=b64", "-S", "chdir", "-k", "foreign"],
    ["-w", "/etc/hostname", "-p", "wa", "-k", "foreign-watch"],
)
BASELINE = (["-e", "0"], ["-b", "321"], ["--backlog_wait_time", "12345"], ["-r", "0"],
            ["-f", "1"])
CONFIG = {
    "SystemInformation_Disabled": True, "Baseline_Disabled": True, "SBoM_Disabled": True,
    "LocalUsers_Disabled": True, "Firewall_Disabled": True, "ListeningPorts_Disabled": True,
    "Heartbeat_Disabled": True, "Statistics_Disabled": True, "Login_Disabled": True,
    "NetworkActivity_Disabled": True,
    "Process_Mode": 4,  # audit only: the agent must own audit
}


def auditctl(*args: str) -> str:
    run = subprocess.run(["auditctl", *args], capture_output=True, text=True, check=False)
    assert run.returncode == 0, f"auditctl {' '.join(args)}: {run.stderr.strip()}"
    return run.stdout


def kernel_state() -> str:
    """`auditctl -s` without its counters (a dead pid as 0) and `auditctl -l`, as text."""
    lines = []
    for line in auditctl("-s").splitlines():
        name, _, value = line.partition(" ")
        if name in COUNTERS:
            continue
        if name == "pid" and value.isdigit() and int(value) and not pid_alive(int(value)):
            line = "pid 0"
        lines.append(line)
    return "\n".join(lines) + "\n--\n" + auditctl("-l")


def raw_status() -> dict[str, int]:
    out = {}
    for line in auditctl("-s").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


@pytest.fixture
def baseline() -> Iterator[str]:
    """A distinctive audit state with foreign rules; the machine's own put back afterwards."""
    if os.geteuid() != 0:
        skip_unless_ci("changing the kernel's audit state needs root")
    if shutil.which("auditctl") is None:
        skip_unless_ci("auditctl is not installed (Debian package auditd)")
    before = raw_status()
    owner = before["pid"]
    assert owner == 0 or not pid_alive(owner), f"a live process (pid {owner}) owns audit"
    rules_before = [line for line in auditctl("-l").splitlines() if line.startswith("-")]
    if owner:
        release_audit_pid()
    for args in BASELINE:
        auditctl(*args)
    for rule in FOREIGN_RULES:
        auditctl(*rule)
    try:
        yield kernel_state()
    finally:
        status = raw_status()
        if status["pid"] and not pid_alive(status["pid"]):
            release_audit_pid()
        for rule in FOREIGN_RULES:
            subprocess.run(["auditctl", "-W" if rule[0] == "-w" else "-d", *rule[1:]],
                           capture_output=True, check=False)
        for line in auditctl("-l").splitlines():
            if "key=iot-micro-agent" in line.split() and line.startswith("-a "):
                subprocess.run(["auditctl", "-d", *line[3:].split()], capture_output=True,
                               check=False)
        assert [line for line in auditctl("-l").splitlines() if line.startswith("-")] \
            == rules_before
        auditctl("-b", str(before["backlog_limit"]))
        auditctl("--backlog_wait_time", str(before["backlog_wait_time"]))
        auditctl("-r", str(before["rate_limit"]))
        auditctl("-f", str(before["failure"]))
        auditctl("-e", str(before["enabled"]))


def start(data: Path, config: Path, log: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:
        return subprocess.Popen(
            [*AGENT, "run", "--data-dir", str(data), "--config", str(config),
             "--log-level", "debug"],
            stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **(env or {})})


def wait_owner(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the agent owns audit with its rules installed (its start-up is over), the
    exclusions of record types among them (the last it adds) unless another reader of the
    multicast group keeps the agent from adding them: the restores below must remove them
    too."""
    deadline = time.monotonic() + 20
    want_exclusion = multicast_readers() == 0
    while True:
        assert proc.poll() is None, f"micro-agent run exited:\n{log.read_text()}"
        rules = auditctl("-l")
        if raw_status()["pid"] == proc.pid and "key=iot-micro-agent" in rules and (
                set(EXCLUSION_RULES) <= set(rules.splitlines()) or not want_exclusion):
            return
        assert time.monotonic() < deadline, f"no ownership within 20 s:\n{log.read_text()}"
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()


def killed(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=30)


def check_after_kill(data: Path, base: str, what: str) -> None:
    """A kill leaves either the record or the kernel exactly as it was."""
    if not (data / RECORD_NAME).exists():
        assert kernel_state() == base, f"{what}: no record, but the audit state changed"


def restore_by_verb(data: Path) -> None:
    run = subprocess.run([*AGENT, "audit-restore", "--data-dir", str(data)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr


def restore_by_restart(data: Path, config: Path, log: Path) -> None:
    proc = start(data, config, log)
    wait_owner(proc, log)
    stop(proc, log)


def recover_and_compare(data: Path, config: Path, log: Path, base: str, by_verb: bool,
                        what: str) -> None:
    if by_verb:
        restore_by_verb(data)
    else:
        restore_by_restart(data, config, log)
    assert not (data / RECORD_NAME).exists(), f"{what}: the record is still there"
    assert kernel_state() == base, f"{what}: the audit state differs after the restore"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    data, config, log = tmp_path / "data", tmp_path / "config.json", tmp_path / "agent.log"
    config.write_text(json.dumps(CONFIG))
    return data, config, log


@pytest.mark.timeout(240)
def test_sigkill_at_random_moments_of_start_up_and_shutdown(
        baseline: str, setup: tuple[Path, Path, Path]) -> None:
    data, config, log = setup
    rng = random.Random(1212)
    for round_ in range(8):
        proc = start(data, config, log)
        if round_ % 2 == 0:
            # Start-up: Python's imports take most of a second; the audit steps follow.
            delay = rng.uniform(0.3, 2.0)
            time.sleep(delay)
            what = f"round {round_}: killed {delay:.3f} s after start"
        else:
            wait_owner(proc, log)
            proc.send_signal(signal.SIGTERM)
            delay = rng.uniform(0.0, 0.15)
            time.sleep(delay)
            what = f"round {round_}: killed {delay:.3f} s into the shutdown"
        killed(proc)
        check_after_kill(data, baseline, what)
        recover_and_compare(data, config, log, baseline, by_verb=rng.random() < 0.5, what=what)


@pytest.mark.timeout(240)
def test_sigkill_right_after_the_record_and_after_each_audit_set(
        baseline: str, setup: tuple[Path, Path, Path]) -> None:
    """Start-up from this baseline makes 4 AUDIT_SETs (pid, enabled, backlog_limit,
    backlog_wait_time) and a clean stop 4 more (enabled, backlog_limit, backlog_wait_time,
    pid 0): a kill right after each of them, and right after the record was written."""
    data, config, log = setup
    for point in ["record", "1", "2", "3", "4", "5", "6", "7", "8"]:
        what = f"killed after {point}"
        proc = start(data, config, log, env={"AM_ANL_KILL_AFTER": point})
        if point in ("record", "1", "2", "3", "4"):
            rc = proc.wait(timeout=30)
        else:
            wait_owner(proc, log)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=30)
        assert rc == -signal.SIGKILL, f"{what}: the agent was not killed at that point ({rc})"
        assert (data / RECORD_NAME).exists(), f"{what}: no record after a change"
        if point in ("1", "7"):
            # Only the ownership differs: a dead owner stays registered until kauditd sends
            # it a record. The AUDIT_SET just before the kill logs one (CONFIG_CHANGE), and
            # when kauditd sends it after the kill it finds the socket gone and unregisters
            # the owner itself (pid 0): a race the kernel decides, seen in CI once.
            pid = raw_status()["pid"]
            assert pid in (proc.pid, 0), f"{what}: the owner is another process ({pid})"
        elif point not in ("record", "8"):
            assert kernel_state() != baseline, f"{what}: nothing had changed"
        recover_and_compare(data, config, log, baseline, by_verb=point in ("2", "4", "6", "8"),
                            what=what)


@pytest.mark.timeout(120)
def test_a_restore_killed_half_way_is_finished_by_the_next(
        baseline: str, setup: tuple[Path, Path, Path]) -> None:
    data, config, log = setup
    proc = start(data, config, log, env={"AM_ANL_KILL_AFTER": "4"})
    assert proc.wait(timeout=30) == -signal.SIGKILL
    # audit-restore itself killed after its first AUDIT_SET: the record stays ...
    run = subprocess.run([*AGENT, "audit-restore", "--data-dir", str(data)],
                         env={**os.environ, "AM_ANL_KILL_AFTER": "1"}, check=False)
    assert run.returncode == -signal.SIGKILL
    assert (data / RECORD_NAME).exists()
    assert kernel_state() != baseline
    # ... and the next restore, from the half-restored state, finishes it.
    recover_and_compare(data, config, log, baseline, by_verb=True, what="second restore")


@pytest.mark.timeout(120)
def test_audit_restore_refuses_while_the_agent_runs(
        baseline: str, setup: tuple[Path, Path, Path]) -> None:
    data, config, log = setup
    proc = start(data, config, log)
    try:
        wait_owner(proc, log)
        during = kernel_state()
        run = subprocess.run([*AGENT, "audit-restore", "--data-dir", str(data)],
                             capture_output=True, text=True, check=False)
        assert run.returncode == 3, run.stderr
        assert "running" in run.stderr
        assert kernel_state() == during and raw_status()["pid"] == proc.pid
        # A second agent on the same data directory is refused before it touches audit.
        second = subprocess.run(
            [*AGENT, "run", "--data-dir", str(data), "--config", str(config)],
            capture_output=True, text=True, check=False, timeout=60)
        assert second.returncode == 2 and "another micro-agent" in second.stderr
        assert kernel_state() == during and raw_status()["pid"] == proc.pid
    finally:
        stop(proc, log)
    assert not (data / RECORD_NAME).exists()
    assert kernel_state() == baseline


def test_record_of_an_earlier_boot_is_discarded_not_restored(tmp_path: Path) -> None:
    """After a reboot the kernel started afresh: the old record must not push values into it
    (the kernel is not asked at all: no root needed)."""
    tmp_path.joinpath(RECORD_NAME).write_text(json.dumps({
        "format": 1, "boot_id": "00000000-0000-0000-0000-000000000000", "agent_pid": 1,
        "written": 0, "status": {"enabled": 1, "failure": 2, "pid": 0, "rate_limit": 7,
                                 "backlog_limit": 99, "backlog_wait_time": 1}}))
    run = subprocess.run([*AGENT, "audit-restore", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "earlier boot" in run.stdout
    assert not tmp_path.joinpath(RECORD_NAME).exists()


def test_unreadable_record_is_kept_and_reported(tmp_path: Path) -> None:
    tmp_path.joinpath(RECORD_NAME).write_text('{"format": 1, "status": {"enabled": "x"}}')
    run = subprocess.run([*AGENT, "audit-restore", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2, run.stderr
    assert "cannot read the record" in run.stderr
    assert tmp_path.joinpath(RECORD_NAME).exists()


def test_nothing_recorded_is_success(tmp_path: Path) -> None:
    run = subprocess.run([*AGENT, "audit-restore", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0 and "nothing recorded" in run.stdout
