"""docs/examples/hub_batches.py, the hub-side reader docs/operations.md shows, on batches the
agent really produced: a short `micro-agent run` (inventory collectors and Heartbeat, no audit)
delivers its envelopes to DATA/delivered, each file the body of the IoT Hub message it would
have sent. The example must print the events `micro-agent decode` prints, from the msgpack
bodies and from the JSON bodies the uplink makes of them (Upload format json)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_agent_run import start_agent

from agent.envelope import JSON_TYPE, MSGPACK_TYPE, encode_batch

pytestmark = [pytest.mark.live, pytest.mark.root]

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "hub_batches.py"
AGENT = [sys.executable, "-m", "agent.cli"]
# No audit source, so no audit rules: the inventory collectors snapshot at the stop.
CONFIG = {"Process_Disabled": True, "NetworkActivity_Disabled": True, "Login_Disabled": True}


def example(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    # Run as an operator would: its own interpreter, nothing of the agent on its path.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-I", str(EXAMPLE), *args], input=stdin,
                          capture_output=True, env=env, check=False, timeout=60)


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the agent's collectors")
    tmp = tmp_path_factory.mktemp("hub-example")
    data, config = tmp / "data", tmp / "config.json"
    config.write_text(json.dumps(CONFIG))
    proc = start_agent(data, config)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    files = sorted((data / "delivered").glob("*.msgpack"))
    assert files, "the run delivered nothing"
    return files


def decoded(path: Path) -> list[dict[str, object]]:
    out = subprocess.run([*AGENT, "decode", str(path)], capture_output=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_example_prints_the_events_decode_prints(delivered: list[Path]) -> None:
    done = example(*map(str, delivered))
    assert done.returncode == 0, done.stderr
    mine = [json.loads(line) for line in done.stdout.splitlines()]
    theirs = [e for path in delivered for e in decoded(path)]
    assert mine == theirs
    kinds = {e["t"] for e in mine}
    assert {"sysinfo", "pkg", "user", "baseline", "heartbeat"} <= kinds


def test_example_reads_json_bodies_and_prints_the_envelope(delivered: list[Path]) -> None:
    for path in delivered:
        body = path.read_bytes()
        parts = encode_batch(body, "json", 64 << 10)  # the bodies the uplink sends as JSON
        assert all(p.content_type == JSON_TYPE for p in parts)
        lines: list[dict[str, object]] = []
        for part in parts:
            done = example("--envelope", "-", stdin=part.body)
            assert done.returncode == 0, done.stderr
            lines += [json.loads(line) for line in done.stdout.splitlines()]
        headers = [line["envelope"] for line in lines if "envelope" in line]
        assert len(headers) == len(parts)
        assert all(isinstance(h, dict) and h["seq"] == int(path.name.split("-")[0])
                   for h in headers)
        assert [line for line in lines if "envelope" not in line] == decoded(path)
        assert encode_batch(body, "msgpack", 64 << 10)[0].content_type == MSGPACK_TYPE


def test_example_refuses_what_is_not_an_envelope(tmp_path: Path, delivered: list[Path]) -> None:
    torn = tmp_path / "torn.msgpack"
    torn.write_bytes(delivered[0].read_bytes()[:-3])
    done = example(str(torn), str(delivered[0]))
    assert done.returncode == 1
    assert str(torn) in done.stderr.decode()
    assert done.stdout  # the good body after the torn one is still printed
