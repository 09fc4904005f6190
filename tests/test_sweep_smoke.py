"""The sweep's machinery (benchmarks/sweep.py, scripts/bench sweep) for one short rate: the
whole agent and auditd RAW, each under 100 exec/s and 100 connections/s for 3 s, in two
rounds. The figures
are not judged here (scripts/bench sweep is where they are taken); what is checked is that
they are produced: the rate reached, CPU of every process involved, the events each
configuration delivered counted, ours complete, and the kernel's audit put back as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kernel_audit import pid_alive

pytestmark = [pytest.mark.live, pytest.mark.root]

REPO = Path(__file__).resolve().parents[1]


def audit_state() -> tuple[dict[str, str], str]:
    status = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=True).stdout
    settings = {}
    for line in status.splitlines():
        key, _, value = line.partition(" ")
        if key not in ("lost", "backlog", "backlog_wait_time_actual"):
            settings[key] = value
    rules = subprocess.run(["auditctl", "-l"], capture_output=True, text=True, check=True).stdout
    return settings, rules


def test_sweep_one_short_rate(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the sweep runs auditd and the agent as the audit daemon: needs root")
    before = audit_state()
    owner = int(before[0].get("pid", "0"))
    assert not (owner and pid_alive(owner)), f"the kernel's audit is owned by pid {owner}"
    out_dir = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "sweep.py"), "--seconds", "3", "--rates",
         "100", "--configs", "agent,raw", "--loads", "exec,conn", "--repeat", "2",
         "--out-dir", str(out_dir), "--work-dir", str(tmp_path), "--no-plot"],
        capture_output=True, text=True, timeout=400, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert audit_state() == before, "the sweep left the kernel's audit changed"

    doc = json.loads((out_dir / "performance-sweep.json").read_text())
    # The rounds in alternating orders: agent then raw, then raw then agent.
    assert [(p["round"], p["config"]) for p in doc["points"] if p["load"] == "exec"] == [
        (0, "agent"), (0, "raw"), (1, "raw"), (1, "agent")]
    points = {(p["config"], p["load"], p["round"]): p for p in doc["points"]}
    assert set(points) == {(c, load, r) for c in ("agent", "raw") for load in ("exec", "conn")
                           for r in (0, 1)}
    for (config, load, _), p in points.items():
        what = f"{config} {load}: {p}"
        assert p["started"] == 300, what  # 3 s at 100/s, every one made
        assert 80 <= p["achieved_rate"] <= 105, what
        assert p["wall_s"] >= 3, what
        # CPU of every process involved: the configuration's own and the kernel's sender.
        daemon = "micro-agent" if config == "agent" else "auditd"
        assert {daemon, "kauditd"} <= set(p["cpu_s"]), what
        assert all(v >= 0 for v in p["cpu_s"].values()), what
        # Read in nanoseconds (schedstat), not 10 ms ticks: 300 events cost each of them
        # more than nothing, which ticks would have rounded away.
        assert p["cpu_s"][daemon] > 0 and p["cpu_s"]["kauditd"] > 0, what
        assert p["cpu_from_ticks"] == [], what  # no thread of theirs ended in 4 s
        assert p["total_cpu_s"] > 0 and p["cpu_pct"] > 0, what
        assert p["load_cpu_s"] > 0, what
        assert 0 < p["delivered"] <= p["started"], what
        if config == "agent":
            # Ours at 100/s delivers every one: exec by its unique argument, connections
            # by the listener's port.
            assert p["delivered"] == p["started"] and p["lost"] == 0, what
    # The table names both configurations and every count.
    assert "| micro-agent / auditd RAW |" in run.stdout
    assert "600/600" in run.stdout  # two rounds of 300
    assert "2 rounds" in run.stdout
