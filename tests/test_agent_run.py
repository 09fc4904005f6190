"""`micro-agent run` as a user runs it: a real process on its embedded default (no IoT Hub,
batches delivered to DATA_DIR/delivered), stopped with SIGTERM, its deliveries read back with
`micro-agent decode`; SIGHUP rereads the local configuration file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_runtime import QUIET, audit_state, audit_state_before_start

pytestmark = [pytest.mark.live, pytest.mark.root]

AGENT = [sys.executable, "-m", "agent.cli"]


def start_agent(data: Path, config: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*AGENT, "run", "--data-dir", str(data), "--config", str(config)],
        stderr=subprocess.PIPE, text=True,
    )
    # Started when the status file says so (written at the first turn of the loop).
    deadline = time.monotonic() + 20
    while not (data / "status.json").exists():
        assert proc.poll() is None, f"micro-agent run exited: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline, "micro-agent run did not start within 20 s"
        time.sleep(0.1)
    return proc


def stop_agent(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err
    return err


def decoded(data: Path) -> list[dict[str, Any]]:
    out = subprocess.run([*AGENT, "decode", str(data / "delivered")], capture_output=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.mark.timeout(180)
def test_run_20s_finds_300_commands_and_50_connections(tmp_path: Path) -> None:
    before = audit_state_before_start()
    data, config = tmp_path / "data", tmp_path / "config.json"
    config.write_text(json.dumps({}))  # the defaults: every collector on
    proc = start_agent(data, config)
    started = time.monotonic()
    tokens = [f"e2e-{i}-{uuid.uuid4()}" for i in range(300)]
    listeners: list[socket.socket] = []
    ports: set[int] = set()
    try:
        for token in tokens:
            subprocess.run(["/bin/echo", token], stdout=subprocess.DEVNULL, check=True)
        for _ in range(50):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(4)
            listeners.append(s)
            ports.add(s.getsockname()[1])
        for s in listeners:
            client = socket.create_connection(s.getsockname())
            peer, _ = s.accept()
            client.sendall(b"ping")
            peer.recv(16)
            client.close()
            peer.close()
        time.sleep(max(0.0, 20 - (time.monotonic() - started)))
    finally:
        err = stop_agent(proc)
        for s in listeners:
            s.close()
    assert "starting" in err and "delivering batches to local directory" in err
    assert audit_state() == before  # rules removed, audit settings restored
    events = decoded(data)
    commands = {str(a) for e in events if e["t"] == "exec" for a in e.get("argv") or []}
    assert [t for t in tokens if t not in commands] == []
    assert len(ports) == 50
    connected = {e.get("rport") for e in events if e["t"] == "net" and e.get("dir") == "out"}
    assert ports - connected == set()
    # The embedded default's other collectors delivered too.
    kinds = {e["t"] for e in events}
    assert {"sysinfo", "pkg", "baseline", "user", "heartbeat", "stats", "listen"} <= kinds
    status = subprocess.run([*AGENT, "status", "--data-dir", str(data)], check=False, capture_output=True, text=True)
    assert status.returncode == 3 and "not running" in status.stdout  # stopped cleanly


@pytest.mark.timeout(120)
def test_sighup_rereads_the_local_configuration(tmp_path: Path) -> None:
    data, config = tmp_path / "data", tmp_path / "config.json"
    config.write_text(json.dumps(QUIET))
    proc = start_agent(data, config)
    on, off, again = (f"hup-{name}-{uuid.uuid4()}" for name in ("on", "off", "again"))
    try:
        subprocess.run(["/bin/echo", on], stdout=subprocess.DEVNULL, check=True)
        time.sleep(1.5)
        config.write_text(json.dumps({**QUIET, "Process_Disabled": True}))
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        subprocess.run(["/bin/echo", off], stdout=subprocess.DEVNULL, check=True)
        config.write_text(json.dumps({**QUIET, "Process_Disabled": False}))
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        subprocess.run(["/bin/echo", again], stdout=subprocess.DEVNULL, check=True)
        time.sleep(1.5)
    finally:
        err = stop_agent(proc)
    assert "rereading" in err
    commands = {str(a) for e in decoded(data) if e["t"] == "exec" for a in e.get("argv") or []}
    assert on in commands and again in commands and off not in commands


def test_a_second_agent_on_the_same_data_dir_refuses_to_start(tmp_path: Path) -> None:
    data, config = tmp_path / "data", tmp_path / "config.json"
    config.write_text(json.dumps(QUIET))
    proc = start_agent(data, config)
    try:
        second = subprocess.run([*AGENT, "run", "--data-dir", str(data), "--config", str(config)],
                                check=False, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "another micro-agent is running" in second.stderr
    finally:
        stop_agent(proc)
    assert os.path.exists(data / "delivered")
