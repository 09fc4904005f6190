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
        time.sleep(1.5)  # NetworkActivity's first socket snapshot (connections before it are old)
        subprocess.run(["unshare", "-m", "sh", "-c",
                        f"mount --bind {resolv} /etc/resolv.conf && getent hosts {name}"],
                       capture_output=True, text=True, timeout=20, check=True)
        # A connection made before the agent's tick read the answer gets its host when its
        # entry leaves (tests/test_dns.py); here the answer is read first.
        time.sleep(1.2)
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
    # getent asks for AAAA (no answer here) and A.
    dns = {e["type"]: e for e in events if e["t"] == "dns" and e.get("name") == name}
    assert dns["A"]["answers"] == [ANSWERED] and dns["A"]["hits"] >= 1, dns
    assert dns["AAAA"]["answers"] == [] and dns["AAAA"]["rcode"] == "NOERROR", dns
    to_it = [e for e in events if e["t"] in ("conn", "net") and e.get("raddr") == ANSWERED
             and e.get("rport") == port]
    assert to_it and all(e.get("host") == name for e in to_it), (to_it, network["counters"])


@pytest.mark.timeout(120)
def test_live_patches_of_disabled_ring_and_devices(served: Responder, tmp_path: Path) -> None:
    """NetworkActivity_Disabled closes and reopens the capture; a patched PacketBufferSize or
    Devices reopens it with the new ring or interfaces, within the same turn of the loop."""
    from dns_responder import ask_udp
    from test_runtime import agent, events_of

    names = {stage: f"{stage}-{uuid.uuid4().hex[:8]}.test" for stage in
             ("before", "during", "after")}
    for name in names.values():
        served.names[name] = [ANSWERED]
    with agent(tmp_path, {"NetworkActivity_Disabled": False, "Process_Disabled": True}) as h:
        network = h.agent.collectors["NetworkActivity"].collector
        first = network.dns  # type: ignore[attr-defined]
        assert first is not None and first.stats().ring_bytes == 262144
        # The loop drains the ring as the kernel hands each block over (4 blocks by default).
        drains = network._on_dns_readable  # type: ignore[attr-defined]
        assert h.agent._watched.get(first.fileno()) == drains
        h.patch({"NetworkActivity_PacketBufferSize": 1 << 20})
        second = network.dns  # type: ignore[attr-defined]
        assert first.closed and second.stats().ring_bytes == 1 << 20
        h.patch({"NetworkActivity_Devices": "lo"})
        third = network.dns  # type: ignore[attr-defined]
        assert second.closed and third.stats().devices == 1
        assert list(h.agent._watched.values()).count(drains) == 1
        assert h.agent._watched.get(third.fileno()) == drains
        h.run_while(lambda: ask_udp(SERVER, names["before"]) and None)
        h.patch({"NetworkActivity_Disabled": True})
        h.spin(0.5)
        assert network.dns is None and third.closed  # type: ignore[attr-defined]
        assert drains not in h.agent._watched.values()
        h.run_while(lambda: ask_udp(SERVER, names["during"]) and None)
        h.patch({"NetworkActivity_Disabled": False})
        h.spin(0.5)
        state = network.state
        assert state.state == "running" and "packet" in state.source, state
        h.run_while(lambda: ask_udp(SERVER, names["after"]) and None)
    seen = {e["name"] for e in events_of(h.data) if e["t"] == "dns"}
    assert names["before"] in seen and names["after"] in seen
    assert names["during"] not in seen
