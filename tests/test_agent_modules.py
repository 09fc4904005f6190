"""The agent process keeps pyroute2 out (nothing in the agent needs it any longer): checked
on a real `micro-agent run` with NetworkActivity_Devices set, through the modules the status
document lists (`micro-agent status --modules`)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from test_agent_run import AGENT, start_agent, stop_agent
from test_runtime import QUIET

pytestmark = [pytest.mark.live, pytest.mark.root]


def status(data: Path) -> dict[str, object]:
    doc = json.loads((data / "status.json").read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.mark.timeout(120)
def test_network_activity_devices_loads_no_pyroute2(tmp_path: Path) -> None:
    data, config = tmp_path / "data", tmp_path / "config.json"
    config.write_text(json.dumps({**QUIET, "NetworkActivity_Disabled": False,
                                  "NetworkActivity_Devices": "lo"}))
    proc = start_agent(data, config)
    try:
        # Wait for a status written after the collector started with its devices.
        deadline = time.monotonic() + 30
        while True:
            reason = status(data).get("collectors", {}).get("NetworkActivity", {}).get("reason")
            if reason and "devices lo: " in reason:
                break
            assert time.monotonic() < deadline, f"NetworkActivity did not start: {reason!r}"
            time.sleep(0.2)
        listed = subprocess.run([*AGENT, "status", "--modules", "--data-dir", str(data)],
                                capture_output=True, text=True, check=True, timeout=30)
    finally:
        stop_agent(proc)
    modules = listed.stdout.split()
    assert modules == status(data)["modules"]
    assert {"agent", "json", "socket", "_cffi_backend"} <= set(modules), modules
    assert "pyroute2" not in modules
