"""The whole agent with the DNS capture: a name served by the test's responder
(tests/dns_responder.py) and resolved by getent through the system resolver gives a `dns`
event, and a TCP connection to the answered address carries that `host`."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dns_responder import Responder, responder
from test_agent_run import decoded, start_agent, stop_agent

pytestmark = [pytest.mark.live, pytest.mark.root]

SERVER = "127.13.0.1"
ANSWERED = "127.13.0.2"


@pytest.fixture
def served() -> Iterator[Responder]:
    with responder(SERVER, {}) as r:
        yield r


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_agent_reports_dns_and_the_host_of_a_connection(served: Responder,
                                                        tmp_path: Path) -> None:
    name = f"svc-{uuid.uuid4().hex[:8]}.test"
    served.names[name] = [ANSWERED]
    data, config = tmp_path / "data", tmp_path / "config.json"
    quiet = {f"{c}_Disabled": True for c in ("Process", "Login", "SystemInformation",
                                              "Baseline", "SBoM", "LocalUsers", "Firewall",
                                              "ListeningPorts")}
    config.write_text(json.dumps(quiet))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {SERVER}\noptions timeout:1 attempts:1\n")
    proc = start_agent(data, config)
    try:
        subprocess.run(["unshare", "-m", "sh", "-c",
                        f"mount --bind {resolv} /etc/resolv.conf && getent hosts {name}"],
                       capture_output=True, text=True, timeout=20, check=True)
        time.sleep(0.5)  # the agent's tick reads the ring every second
        with socket.socket() as listener:
            listener.bind((ANSWERED, 0))
            listener.listen(1)
            client = socket.create_connection(listener.getsockname())
            peer, _ = listener.accept()
            time.sleep(4.5)  # two socket snapshots see it
            client.close()
            peer.close()
            port = listener.getsockname()[1]
        state = json.loads((data / "status.json").read_text())
    finally:
        stop_agent(proc)
    network = state["collectors"]["NetworkActivity"]
    assert network["state"] == "running" and "packet" in network["source"], network
    events = decoded(data)
    dns = [e for e in events if e["t"] == "dns" and e.get("name") == name]
    assert dns and dns[0]["answers"] == [ANSWERED] and dns[0]["hits"] >= 1, dns
    to_it = [e for e in events if e["t"] in ("conn", "net") and e.get("raddr") == ANSWERED
             and e.get("rport") == port]
    assert to_it and all(e.get("host") == name for e in to_it), to_it
