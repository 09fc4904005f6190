"""The agent as an IoT Edge module: with the Edge module environment ($IOTEDGE_*) it connects
as that module, with its trust bundle and every SAS token's signature from the Edge
runtime's workload API (agent.uplink.edge_workload) (here tests/hub/edge.py on a unix
socket), to the Edge hub (here the stand-in's gate, which checks the token with the module's
key); SystemInformation reports agent_type Edge. What is not the real thing: the Edge hub is
the stand-in, not edgeHub (it is IoT Hub's protocol either way), and the workload API serves
only the two calls a module makes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub.broker import Certificates
from hub.edge import WorkloadApi
from hub.hub import Hub
from test_uplink_iothub import ALL_OFF

from agent.envelope import decode_envelope
from agent.inventory import sysinfo
from agent.uplink.identity import EDGE_ENV, IdentityError, load_identity

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)

DEVICE, MODULE, GENERATION = "edge-gateway-1", "iot-micro-agent", "638000000000000001"


def edge_env(workload_uri: str, hub: Hub | None = None) -> dict[str, str]:
    return {
        "IOTEDGE_WORKLOADURI": workload_uri,
        "IOTEDGE_DEVICEID": DEVICE,
        "IOTEDGE_MODULEID": MODULE,
        "IOTEDGE_MODULEGENERATIONID": GENERATION,
        "IOTEDGE_IOTHUBHOSTNAME": hub.hostname if hub else "test-hub.azure-devices.net",
        "IOTEDGE_GATEWAYHOSTNAME": hub.gateway if hub else "localhost",
        "IOTEDGE_APIVERSION": "2019-01-30",
        "IOTEDGE_AUTHSCHEME": "sasToken",
    }


def test_the_edge_environment_is_an_identity_source_and_sets_agent_type(tmp_path: Path) -> None:
    env = edge_env("unix:///var/run/iotedge/workload.sock")
    ident, why = load_identity(environ=env, default_file=str(tmp_path / "absent"))
    assert ident is not None and ident.edge and ident.auth == "edge"
    assert (ident.hostname, ident.device_id, ident.module_id, ident.gateway) == (
        "test-hub.azure-devices.net", DEVICE, MODULE, "localhost")
    assert "IoT Edge module" in why and "workload API" in ident.describe()
    # A connection string given explicitly still wins.
    cs = "HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey=a2V5"
    ident, _ = load_identity(environ={**env, "IOTHUB_CONNECTION_STRING": cs})
    assert ident is not None and not ident.edge
    # Not all of it: not Edge.
    for name in EDGE_ENV:
        partial = {k: v for k, v in env.items() if k != name}
        ident, _ = load_identity(environ=partial, default_file=str(tmp_path / "absent"))
        assert ident is None, name
    with pytest.raises(IdentityError, match="auth scheme 'x509' is not supported"):
        load_identity(environ={**env, "IOTEDGE_AUTHSCHEME": "x509"})
    with pytest.raises(IdentityError, match="IOTEDGE_MODULEID"):
        load_identity(environ={**env, "IOTEDGE_MODULEID": "bad id/with slash"})
    assert sysinfo.gather(tmp_path, environ=env, with_interfaces=False).events[0]["agent_type"] == "Edge"
    assert sysinfo.gather(tmp_path, environ={}, with_interfaces=False).events[0]["agent_type"] == "Standalone"


@pytest.fixture
def workload(iothub: Hub, hub_certs: Certificates, tmp_path: Path) -> Iterator[WorkloadApi]:
    def key(module: str) -> str | None:
        return iothub.identity(DEVICE, module).key

    api = WorkloadApi(tmp_path / "workload.sock", hub_certs.ca_pem, key, GENERATION)
    yield api
    api.close()


@pytest.mark.timeout(120)
def test_micro_agent_run_as_an_iot_edge_module(iothub: Hub, workload: WorkloadApi,
                                               tmp_path: Path) -> None:
    iothub.identity(DEVICE, MODULE)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**ALL_OFF, "SystemInformation_Disabled": False}))
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items()
           if k != "IOTHUB_CONNECTION_STRING" and not k.startswith("IOTEDGE_")}
    env.update(edge_env(workload.uri, iothub))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--data-dir", str(data), "--config", str(config),
         "--log-level", "debug"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        uplink: dict[str, Any] = {}
        while uplink.get("state") != "connected":
            assert proc.poll() is None and time.monotonic() < deadline, uplink
            time.sleep(0.2)
            try:
                uplink = json.loads((data / "status.json").read_text()).get("uplink", {})
            except (OSError, ValueError):
                uplink = {}
        assert (uplink["identity"], uplink["auth"], uplink["gateway"]) == (
            f"{DEVICE}/{MODULE}", "edge", "localhost")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "running as an IoT Edge module" in err
    calls = workload.calls()
    assert ("GET", "/trust-bundle") in calls
    assert ("POST", f"/modules/{MODULE}/genid/{GENERATION}/sign") in calls
    assert iothub.gate.decisions()[-1] == (f"{DEVICE}/{MODULE}", True, "SAS token valid")
    # SystemInformation's snapshot, sealed at SIGTERM, says Edge.
    records = iothub.wait_for_telemetry(1, timeout=5)
    events = [e for r in records for e in decode_envelope(r.payload)["events"]]
    infos = [e for e in events if e["t"] == "sysinfo"]
    assert infos and all(e["agent_type"] == "Edge" for e in infos)
    assert all((r.device_id, r.module_id) == (DEVICE, MODULE) for r in records)
