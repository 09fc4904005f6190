"""The sweep's report (benchmarks/sweep.py --report) of a run in rounds: each point's median
CPU %, the events of every round summed, and the agent against auditd RAW as the median of
the rounds' paired ratios with their lowest and highest. No root: nothing is measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def point(config: str, rnd: int, cpu_s: float, delivered: int = 3000) -> dict[str, object]:
    daemon = "micro-agent" if config == "agent" else "auditd"
    return {"config": config, "load": "exec", "target_rate": 100, "tag": f"t{config}{rnd}",
            "round": rnd, "started": 3000, "achieved_rate": 100.0, "wall_s": 10.0,
            "cpu_s": {daemon: cpu_s - 0.05, "kauditd": 0.05}, "delivered": delivered}


def report(tmp_path: Path, points: list[dict[str, object]], repeat: int) -> str:
    doc = {"started": "2026-12-06 03:00 UTC", "machine": "test", "seconds": 10,
           "versions": {"auditd": "1", "laurel": "1"}, "rates": [100], "configs": ["raw", "agent"],
           "loads": ["exec"], "repeat": repeat, "points": points}
    (tmp_path / "doc.json").write_text(json.dumps(doc))
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sweep.py"), "--report",
                           str(tmp_path / "doc.json"), "--out-dir", str(tmp_path / "out"),
                           "--no-plot"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_rounds_give_medians_and_the_spread_of_the_paired_ratios(tmp_path: Path) -> None:
    # Ratios per round: 0.30/1.00, 0.42/1.20, 0.33/0.90 = 0.30, 0.35, 0.367: median 0.35.
    # The ratio of the medians would be 0.33/1.00 = 0.33: the table pairs each round.
    points = [point("raw", 0, 1.00), point("agent", 0, 0.30),
              point("agent", 1, 0.42), point("raw", 1, 1.20),
              point("raw", 2, 0.90), point("agent", 2, 0.33, delivered=2999)]
    out = report(tmp_path, points, 3)
    row = next(line for line in out.splitlines() if line.startswith("| 100 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["100 (100-100)", "10.00 %, 9000/9000",
                     "3.30 %, 8999/9000 (**1 lost**)", "0.35 (0.30-0.37)"]
    assert "3 rounds" in out


def test_one_round_reads_as_before(tmp_path: Path) -> None:
    out = report(tmp_path, [point("raw", 0, 1.0), point("agent", 0, 0.3)], 1)
    row = next(line for line in out.splitlines() if line.startswith("| 100 "))
    assert row == "| 100 (100-100) | 10.00 %, 3000/3000 | 3.00 %, 3000/3000 | 0.30 |"
    assert "rounds" not in out
