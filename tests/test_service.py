"""The agent under a service manager (agent.service): sd_notify datagrams read from a socket
the test binds, the status file in the runtime directory, log lines for the journal. The
agent runs for real (`micro-agent run`) with the collectors that need no kernel source and no
root (Heartbeat, Statistics, LocalUsers, LogCollector); the notifier and the formatter are also checked
alone."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent.service import (
    JournalFormatter,
    Notifier,
    default_data_dir,
    link_status,
    log_handler,
    notify_address,
    runtime_dir,
    status_line,
    status_path,
)

AGENT = [sys.executable, "-m", "agent.cli"]
# Every collector that reads the kernel or needs root is off.
NO_KERNEL = {name + "_Disabled": True for name in (
    "Process", "NetworkActivity", "Login", "ListeningPorts", "Firewall", "SystemInformation",
    "SBoM", "Baseline", "FileSystem", "Peripheral")}
WATCHDOG_USEC = 2_000_000
# What systemd sets; the agent started here sees only those a test gives it.
SERVICE_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "RUNTIME_DIRECTORY",
                     "STATE_DIRECTORY", "JOURNAL_STREAM")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


class NotifySocket:
    """The service manager's end: a datagram socket bound at a path, each datagram kept with
    the monotonic time it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[tuple[float, str]] = []

    def wait_for(self, message: str, timeout: float) -> float:
        """Reads datagrams until one holds the line message; the time it came."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {message!r} within {timeout} s: {self.received}"
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            now = time.monotonic()
            self.received.append((now, data))
            if message in data.split("\n"):
                return now

    def times(self, message: str) -> list[float]:
        return [t for t, data in self.received if message in data.split("\n")]

    def close(self) -> None:
        self.sock.close()


def start(tmp_path: Path, env: dict[str, str], stderr_path: Path,
          journal: bool) -> subprocess.Popen[bytes]:
    """micro-agent run with env, its stderr to stderr_path; the data directory is
    tmp_path/data, given by $STATE_DIRECTORY when env has it, else by --data-dir."""
    config = tmp_path / "config.json"
    data = [] if "STATE_DIRECTORY" in env else ["--data-dir", str(tmp_path / "data")]
    config.write_text(json.dumps(NO_KERNEL))
    with open(stderr_path, "wb") as stderr:
        if journal:  # what systemd sets for a stream it connected to the journal
            st = os.fstat(stderr.fileno())
            env = {**env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        inherited = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
        return subprocess.Popen(
            [*AGENT, "run", *data, "--config", str(config)],
            env={**inherited, **env}, stderr=stderr)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=60) == 0
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def status_command(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENT, "status", "--data-dir", str(data), *extra],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.timeout(120)
def test_run_under_systemd_notifies_keeps_status_in_the_runtime_dir_and_logs_for_the_journal(
        tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    notify = NotifySocket(tmp_path / "notify")
    err = tmp_path / "stderr"
    proc = start(tmp_path, {"NOTIFY_SOCKET": str(notify.path),
                            "WATCHDOG_USEC": str(WATCHDOG_USEC),
                            "RUNTIME_DIRECTORY": str(run),
                            "STATE_DIRECTORY": f"{data}:{tmp_path / 'other'}"},
                  err, journal=True)
    try:
        ready = notify.wait_for("READY=1", 30)
        # Ready after the first turn: the status file (written at that turn) is there.
        assert (run / "status.json").is_file()
        watch_until = ready + 5.0
        while time.monotonic() < watch_until:
            notify.wait_for("WATCHDOG=1", 5)
        listed = status_command(data)
        by_option = status_command(tmp_path / "elsewhere", "--runtime-dir", str(run))
    finally:
        stop(proc)
    stopping = notify.wait_for("STOPPING=1", 5)
    notify.close()

    # The watchdog: pinged at half of WATCHDOG_USEC, never later than WATCHDOG_USEC.
    pings = [t for t in notify.times("WATCHDOG=1") if ready - 1 <= t < stopping]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    interval = WATCHDOG_USEC / 2e6
    assert len(gaps) >= 4, pings
    assert all(0.8 * interval <= g < 2 * interval for g in gaps), gaps
    # One READY; STATUS lines summarise the collectors.
    assert len(notify.times("READY=1")) == 1
    statuses = [line for _, d in notify.received for line in d.split("\n")
                if line.startswith("STATUS=collectors: ")]
    assert statuses and "4 running" in statuses[0] and "uplink: local" in statuses[0], statuses

    # status.json lives in the runtime directory; DATA/status.json only links to it.
    assert (data / "status.json").is_symlink()
    assert os.readlink(data / "status.json") == str(run / "status.json")
    assert not (data / "status.tmp").exists()
    for answer in (listed, by_option):
        assert answer.returncode == 0 and "running (pid" in answer.stdout, answer
    doc = json.loads((run / "status.json").read_text())
    assert doc["running"] is False and doc["pid"] == proc.pid
    stopped = status_command(data)
    assert stopped.returncode == 3 and "not running" in stopped.stdout
    # The runtime directory is gone (a reboot): not running, and it says why.
    for path in run.iterdir():
        path.unlink()
    run.rmdir()
    gone = status_command(data)
    assert gone.returncode == 3 and "is gone" in gone.stdout, gone
    gone_json = status_command(data, "--json")
    assert gone_json.returncode == 3
    assert json.loads(gone_json.stdout) == {"running": False, "alive": False,
                                            "status_file": str(run / "status.json")}

    # Journal lines: a priority prefix and no timestamp of their own.
    lines = err.read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert not any(TIMESTAMP.search(line[3:]) for line in lines)
    assert any(line.startswith("<6>agent: micro-agent ") and "starting" in line for line in lines)
    assert any(line.startswith("<6>agent: Heartbeat: running") for line in lines), lines


@pytest.mark.timeout(120)
def test_run_without_systemd_keeps_status_in_the_data_dir_and_timestamps(tmp_path: Path) -> None:
    data = tmp_path / "data"
    err = tmp_path / "stderr"
    # JOURNAL_STREAM inherited by a process whose stderr is somewhere else is not the journal.
    other = os.stat(tmp_path)
    env = {"JOURNAL_STREAM": f"{other.st_dev}:{other.st_ino}"}
    proc = start(tmp_path, env, err, journal=False)
    try:
        deadline = time.monotonic() + 30
        while not (data / "status.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop(proc)
    assert (data / "status.json").is_file() and not (data / "status.json").is_symlink()
    lines = err.read_text().splitlines()
    assert lines and all(TIMESTAMP.match(line) for line in lines), lines


# --- the notifier alone ---------------------------------------------------------------------


def test_notify_socket_addresses() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@sd-notify") == b"\0sd-notify"
    assert notify_address("") is None
    assert notify_address("vsock:2:1234") is None  # not spoken here: no notifications


def test_the_environment_is_read_once_and_the_watchdog_is_ours_only() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "42", "A": "b"}
    mine = Notifier.from_environ(env, pid=42)
    assert mine.watchdog_interval_s == 1.5 and mine.watchdog_due == 0.0
    assert env == {"A": "b"}  # children never see them
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "43"}
    theirs = Notifier.from_environ(env, pid=42)
    assert theirs.enabled and theirs.watchdog_interval_s is None
    assert theirs.watchdog_due == float("inf")
    assert not Notifier.from_environ({}, pid=42).enabled
    for n in (mine, theirs):
        n.close()


def test_notifier_over_an_abstract_socket() -> None:
    name = f"micro-agent-test-{uuid.uuid4()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(5)
    n = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "200000"}, pid=1)
    try:
        n.keepalive(10.0)
        n.keepalive(10.05)  # not due yet: half of 0.2 s is 0.1 s
        n.ready()
        n.ready()
        n.status("collectors: 3 running")
        n.status("collectors:\n3 running")  # the same line once newlines are spaces
        n.keepalive(10.1)
        n.stopping()
        n.keepalive(20.0)  # no ping once stopping
        server.setblocking(False)
        got = []
        while True:
            try:
                got.append(server.recv(4096).decode())
            except BlockingIOError:
                break
    finally:
        n.close()
        server.close()
    assert got == ["WATCHDOG=1", "READY=1", "STATUS=collectors: 3 running", "WATCHDOG=1",
                   "STOPPING=1\nSTATUS=stopping: flushing collectors and lanes"]


def test_a_notifier_whose_manager_is_gone_keeps_quiet_and_retries_soon(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(str(tmp_path / "nobody"), watchdog_interval_s=10.0)
    with caplog.at_level(logging.WARNING, logger="agent"):
        n.keepalive(100.0)
        n.keepalive(101.0)
    assert n.watchdog_due == pytest.approx(102.0)
    assert len([r for r in caplog.records if "cannot notify" in r.message]) == 1
    n.close()


def test_status_line_names_what_is_not_running() -> None:
    doc = {"collectors": {"Process": {"state": "running"}, "Login": {"state": "disabled"},
                          "Firewall": {"state": "unavailable"}, "SBoM": {"state": "running"}},
           "outbox": {"depth": {"High": {"count": 2}, "Low": {"count": 1}}},
           "uplink": {"kind": "iothub", "state": "connected"}}
    assert status_line(doc) == ("collectors: 1 disabled, 2 running, 1 unavailable (Firewall); "
                                "outbox: 3 batches; uplink: iothub connected")


# --- where status.json is -------------------------------------------------------------------


def test_status_path_resolution(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert default_data_dir({}) == "/var/lib/iot-micro-agent"
    assert default_data_dir({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == "/var/lib/a"
    assert runtime_dir(None, {}) is None
    assert runtime_dir(None, {"RUNTIME_DIRECTORY": "/run/a:/run/b"}) == Path("/run/a")
    assert runtime_dir("/opt/r", {"RUNTIME_DIRECTORY": "/run/a"}) == Path("/opt/r")
    assert status_path(data, None) == data / "status.json"
    assert status_path(data, Path("/run/a")) == Path("/run/a/status.json")


def test_the_status_link_is_made_once(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    run.mkdir()
    (data / "status.json").write_text("{}")  # left by a run without a runtime directory
    link_status(data, run / "status.json")
    assert os.readlink(data / "status.json") == str(run / "status.json")
    before = os.lstat(data / "status.json")
    link_status(data, run / "status.json")  # already right: not written again
    after = os.lstat(data / "status.json")
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    link_status(data, data / "status.json")  # the file itself: nothing to link
    assert sorted(p.name for p in data.iterdir()) == ["status.json"]


# --- log lines ------------------------------------------------------------------------------


def test_journal_lines_carry_the_priority_on_every_line(tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w") as stream:
        st = os.fstat(stream.fileno())
        handler = log_handler(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert isinstance(handler.formatter, JournalFormatter)
        plain = log_handler(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not isinstance(plain.formatter, JournalFormatter)
        assert not isinstance(log_handler(stream, {}).formatter, JournalFormatter)
        logger = logging.getLogger("agent.test_service")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        try:
            logger.debug("d")
            logger.info("i")
            logger.warning("w")
            logger.error("e")
            logger.critical("c")
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception("failed")
        finally:
            logger.removeHandler(handler)
    lines = (tmp_path / "stderr").read_text().splitlines()
    assert lines[:5] == ["<7>agent.test_service: d", "<6>agent.test_service: i",
                         "<4>agent.test_service: w", "<3>agent.test_service: e",
                         "<2>agent.test_service: c"]
    trace = lines[5:]
    assert trace[0] == "<3>agent.test_service: failed"
    assert trace[-1] == "<3>ValueError: boom" and all(line.startswith("<3>") for line in trace)
