"""Provisioning through the Device Provisioning Service (agent.uplink.provisioning and its use by
agent.uplink.iothub) against the stand-in's DPS (tests/hub/dps.py, behind the hub's TLS gate):
the real SDK's ProvisioningDeviceClient registers over MQTT/TLS, and the device then connects
to the hub DPS assigned.

The end-to-end tests run an Agent in this process with no collectors and put batches into its
outbox themselves (as tests/test_uplink_iothub.py does), so that what must arrive is known
exactly; one test runs `micro-agent run` as a process for the command line's wiring. They use
the stand-in's ports: run them holding the kernel's lock, as every stand-in test.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hub.broker import Certificates
from hub.dps import Dps, group_device_key
from hub.hub import Hub
from test_uplink_iothub import AGENT_ID, ALL_OFF, FAST

from agent import __version__
from agent.collectors import Environment
from agent.config import ConfigStore
from agent.envelope import Identity, decode_envelope, sealer
from agent.outbox import Outbox
from agent.pipeline import Agent
from agent.uplink.identity import IdentityError
from agent.uplink.iothub import IotHubUplink, UplinkOptions
from agent.uplink.provisioning import (
    ASSIGNMENT_FILE,
    AUTH_GROUP,
    DpsSettings,
    Provisioner,
    derive_device_key,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)

ENDPOINT = "localhost"  # the stand-in's gate; its certificate covers the name


def key_file(path: Path, key: str, mode: int = 0o600) -> str:
    path.write_text(key + "\n")
    path.chmod(mode)
    return str(path)


# --- settings, the derived key and the stored assignment (no network) ---------------------------


def test_group_device_key_is_the_hmac_of_the_registration_id_as_openssl_computes_it() -> None:
    group_key = base64.b64encode(bytes(range(64))).decode()
    for registration_id in ("dev-1", "sensor.42:a_b", "x" * 128):
        hexkey = base64.b64decode(group_key).hex()
        out = subprocess.run(
            ["openssl", "dgst", "-sha256", "-mac", "HMAC", "-macopt", f"hexkey:{hexkey}", "-binary"],
            input=registration_id.encode(), capture_output=True, check=True).stdout
        assert derive_device_key(group_key, registration_id) == base64.b64encode(out).decode()
        # The stand-in derives it on its own: the two agree.
        assert derive_device_key(group_key, registration_id) == group_device_key(group_key, registration_id)


def test_settings_come_from_options_or_environment_and_bad_ones_are_refused(tmp_path: Path) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    good = key_file(tmp_path / "key", key)
    assert DpsSettings.load(environ={}) is None  # no ID scope: no DPS
    env = {"IOTHUB_DPS_ID_SCOPE": "0ne0001", "IOTHUB_DPS_REGISTRATION_ID": "dev-1",
           "IOTHUB_DPS_GROUP_KEY_FILE": good}
    settings = DpsSettings.load(environ=env)
    assert settings is not None and settings.auth == AUTH_GROUP
    assert settings.endpoint == "global.azure-devices-provisioning.net"
    assert settings.device_key == derive_device_key(key, "dev-1")
    assert key not in repr(settings) and settings.device_key not in repr(settings)
    assert settings.device_key not in settings.describe()
    # The command line's value wins over the environment's.
    assert DpsSettings.load(registration_id="dev-2", environ=env).registration_id == "dev-2"  # type: ignore[union-attr]

    def refused(**kwargs: Any) -> str:
        with pytest.raises(IdentityError) as err:
            DpsSettings.load(**kwargs, environ={})
        assert key not in str(err.value)
        return str(err.value)

    assert "registration id" in refused(id_scope="0ne0001", symmetric_key_file=good)
    assert "exactly one credential" in refused(id_scope="0ne0001", registration_id="d")
    assert "exactly one credential" in refused(id_scope="0ne0001", registration_id="d",
                                               symmetric_key_file=good, group_key_file=good)
    assert "lower-case" in refused(id_scope="0ne0001", registration_id="Dev", symmetric_key_file=good)
    # The connection string's permission checks (identity.read_secret_file).
    loose = key_file(tmp_path / "loose", key, 0o644)
    assert "chmod 600" in refused(id_scope="0ne0001", registration_id="d", symmetric_key_file=loose)
    bad = key_file(tmp_path / "bad", "not base64!")
    assert "base64" in refused(id_scope="0ne0001", registration_id="d", group_key_file=bad)
    assert "does not exist" in refused(id_scope="0ne0001", registration_id="d",
                                       symmetric_key_file=str(tmp_path / "none"))


def test_the_stored_assignment_is_reused_only_for_the_same_settings(tmp_path: Path) -> None:
    key = key_file(tmp_path / "key", base64.b64encode(b"k" * 32).decode())
    settings = DpsSettings.load("0ne0001", "dev-1", ENDPOINT, symmetric_key_file=key, environ={})
    assert settings is not None
    doc = {"version": 1, "id_scope": "0ne0001", "registration_id": "dev-1", "auth": "symmetric",
           "endpoint": ENDPOINT, "assigned_hub": "hub-a.azure-devices.net", "device_id": "dev-1",
           "assigned_at": 1764900000}
    (tmp_path / ASSIGNMENT_FILE).write_text(json.dumps(doc))
    prov = Provisioner(settings, tmp_path)
    stored = prov.stored()
    assert stored is not None and stored.assigned_hub == "hub-a.azure-devices.net"
    ident = prov.identity(stored)
    assert (ident.hostname, ident.device_id, ident.key) == ("hub-a.azure-devices.net", "dev-1",
                                                            settings.device_key)
    for name, value in (("id_scope", "0ne0002"), ("registration_id", "dev-2"), ("auth", "group"),
                        ("endpoint", "other"), ("assigned_hub", "not a host"), ("version", 2)):
        (tmp_path / ASSIGNMENT_FILE).write_text(json.dumps({**doc, name: value}))
        assert Provisioner(settings, tmp_path).stored() is None, name
    (tmp_path / ASSIGNMENT_FILE).write_text("{torn")
    assert Provisioner(settings, tmp_path).stored() is None


# --- end to end against the stand-in -----------------------------------------------------------


@pytest.fixture
def dps(iothub: Hub) -> Iterator[Dps]:
    service = Dps(iothub)
    service.attach()
    try:
        yield service
    finally:
        service.detach()


class DpsAgent:
    """An Agent with no collectors, the IoT Hub uplink provisioned through DPS, a real outbox;
    started as `micro-agent run` starts it (the stored assignment, else none)."""

    def __init__(self, data: Path, settings: DpsSettings, options: UplinkOptions = FAST) -> None:
        data.mkdir(parents=True, exist_ok=True)
        config_path = data / "config.json"
        config_path.write_text(json.dumps(ALL_OFF))
        self.store = ConfigStore(str(config_path))
        cfg = self.store.config
        self.outbox = Outbox(data, cfg.outbox.max_bytes, cfg.iothub_module.message_timeout_minutes * 60)
        self.provisioner = Provisioner(settings, data)
        stored = self.provisioner.stored()
        identity = None if stored is None else self.provisioner.identity(stored)
        self.ident = Identity(AGENT_ID, __version__, settings.registration_id, "")
        self.uplink = IotHubUplink(identity, AGENT_ID, options, provisioner=self.provisioner,
                                   rng=random.Random(7))
        self.agent = Agent(self.store, Environment(data_dir=data), self.outbox, self.uplink,
                           self.ident, [])
        self.agent.start()
        self.uplink.attach(self.agent)
        self.closed = False

    def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {timeout} s; uplink {self.uplink.status()}")
            self.agent.turn(timeout=0.02)

    def state(self) -> str:
        return str(self.uplink.status()["state"])

    def connected(self, timeout: float = 20.0) -> None:
        self.until(lambda: self.state() == "connected", timeout, "connected")

    def put(self, n: int) -> list[int]:
        seqs = []
        for i in range(n):
            events = [{"t": "test", "i": i}]
            info = self.outbox.put("Medium", sealer(msgpack.packb(events), self.ident, "Medium",
                                                    ["Test"]), events=1)
            assert info is not None
            seqs.append(info.seq)
        return seqs

    def depth(self) -> int:
        return sum(d.count for d in self.outbox.depth().values())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.agent.shutdown()


@pytest.fixture
def agents() -> Iterator[list[DpsAgent]]:
    made: list[DpsAgent] = []
    yield made
    for a in made:
        a.close()


def start(agents: list[DpsAgent], data: Path, settings: DpsSettings) -> DpsAgent:
    a = DpsAgent(data, settings)
    agents.append(a)
    return a


def delivered(a: DpsAgent, iothub: Hub, seqs: list[int], device_id: str) -> None:
    """Every batch of `seqs` arrived at the hub, from `device_id`, once at least."""
    a.until(lambda: a.depth() == 0, 20, "the outbox drained")
    records = iothub.wait_for_telemetry(len(seqs), timeout=5)
    arrived = {int(r.custom["seq"]) for r in records if r.device_id == device_id}
    assert set(seqs) <= arrived
    for r in records:
        assert decode_envelope(r.payload)["dev"] == device_id


def symmetric(tmp_path: Path, dps: Dps, registration_id: str) -> DpsSettings:
    key = key_file(tmp_path / f"{registration_id}.key", dps.individual(registration_id))
    settings = DpsSettings.load(dps.id_scope, registration_id, ENDPOINT, symmetric_key_file=key,
                                ca_file=str(dps.hub.certs.ca.cert), environ={})
    assert settings is not None
    return settings


def test_symmetric_key_first_start_provisions_and_the_second_reuses_the_assignment(
    iothub: Hub, dps: Dps, tmp_path: Path, agents: list[DpsAgent]
) -> None:
    settings = symmetric(tmp_path, dps, "dps-sym-1")
    data = tmp_path / "data"
    a = start(agents, data, settings)
    seqs = a.put(3)
    a.connected()
    assert [(r.registration_id, r.auth) for r in dps.registrations] == [("dps-sym-1", "symmetric")]
    assert ("dps-sym-1", True, "DPS: symmetric") in iothub.gate.decisions()
    delivered(a, iothub, seqs, "dps-sym-1")
    status = a.uplink.status()
    assert status["hub"] == "localhost" and status["identity"] == "dps-sym-1"
    assert status["dps"]["state"] == "assigned" and status["dps"]["registrations"] == 1
    assert status["provisions"] == 1 and status["provision_errors"] == 0
    stored = json.loads((data / ASSIGNMENT_FILE).read_text())
    assert stored["assigned_hub"] == "localhost" and stored["device_id"] == "dps-sym-1"
    assert stored["auth"] == "symmetric" and stored["id_scope"] == dps.id_scope
    assert settings.device_key not in (data / ASSIGNMENT_FILE).read_text()
    assert os.stat(data / ASSIGNMENT_FILE).st_mode & 0o077 == 0
    a.close()

    connects = dps.connects
    b = start(agents, data, settings)
    assert b.uplink.status()["dps"]["state"] == "assigned (stored)"
    more = b.put(2)
    b.connected()
    delivered(b, iothub, more, "dps-sym-1")
    assert dps.connects == connects and len(dps.registrations) == 1  # DPS not contacted
    assert b.uplink.status()["provisions"] == 0


def test_x509_provisions_with_the_client_certificate_and_connects_as_x509(
    iothub: Hub, dps: Dps, hub_certs: Certificates, tmp_path: Path, agents: list[DpsAgent]
) -> None:
    dps.x509("dps-x509-1")
    pair = hub_certs.client("dps-x509-1")
    pair.key.chmod(0o600)
    settings = DpsSettings.load(dps.id_scope, "dps-x509-1", ENDPOINT, cert_file=str(pair.cert),
                                key_file=str(pair.key), ca_file=str(hub_certs.ca.cert), environ={})
    assert settings is not None and settings.device_key is None
    a = start(agents, tmp_path / "data", settings)
    seqs = a.put(2)
    a.connected()
    assert [(r.registration_id, r.auth) for r in dps.registrations] == [("dps-x509-1", "x509")]
    assert ("dps-x509-1", True, "X.509 CN=dps-x509-1") in iothub.gate.decisions()
    assert a.uplink.status()["auth"] == "x509"
    delivered(a, iothub, seqs, "dps-x509-1")
    # A certificate DPS has no enrollment for is refused: a reported state, not a crash.
    other = hub_certs.client("dps-x509-unknown")
    other.key.chmod(0o600)
    unknown = DpsSettings.load(dps.id_scope, "dps-x509-unknown", ENDPOINT, cert_file=str(other.cert),
                               key_file=str(other.key), ca_file=str(hub_certs.ca.cert), environ={})
    assert unknown is not None
    b = start(agents, tmp_path / "data2", unknown)
    b.until(lambda: b.uplink.status()["provision_errors"] >= 1, 20, "DPS refused")
    assert b.state().startswith("disconnected: provisioning failed: DPS refused the credentials")
    assert b.uplink.status()["dps"]["state"].startswith("failed: ")


def test_a_hub_that_refuses_the_identity_makes_the_agent_provision_again_and_loses_nothing(
    iothub: Hub, dps: Dps, tmp_path: Path, agents: list[DpsAgent], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = symmetric(tmp_path, dps, "dps-moved-1")
    a = start(agents, tmp_path / "data", settings)
    first = a.put(2)
    a.connected()
    delivered(a, iothub, first, "dps-moved-1")
    # The device is moved: the hub now knows it with another key. The next connect is refused.
    iothub.identity("dps-moved-1", key=base64.b64encode(b"moved" * 8).decode())
    iothub.kill()
    iothub.start()
    during = a.put(3)
    a.until(lambda: a.uplink.status()["state_changes"]["failed"] >= 1, 20, "the hub refused")
    a.until(lambda: a.state() == "connected", 30, "provisioned again and connected")
    assert [r.registration_id for r in dps.registrations] == ["dps-moved-1", "dps-moved-1"]
    status = a.uplink.status()
    assert status["provisions"] == 2 and status["dps"]["state"] == "assigned"
    delivered(a, iothub, first + during, "dps-moved-1")
    refused = [d for d in iothub.gate.decisions() if d[0] == "dps-moved-1" and not d[1]]
    assert refused and "signature does not match" in refused[0][2]
    assert settings.device_key is not None
    assert not [r for r in caplog.records if settings.device_key in r.getMessage()]


def test_dps_down_is_a_reported_state_with_backoff_and_nothing_is_lost(
    iothub: Hub, dps: Dps, tmp_path: Path, agents: list[DpsAgent]
) -> None:
    settings = symmetric(tmp_path, dps, "dps-down-1")
    dps.down = True
    a = start(agents, tmp_path / "data", settings)
    seqs = a.put(4)
    a.until(lambda: a.uplink.status()["provision_errors"] >= 3, 20, "three failed attempts")
    status = a.uplink.status()
    assert status["state"].startswith("disconnected: provisioning failed: ")
    assert status["dps"]["state"].startswith("failed: ") and status["hub"] is None
    assert a.depth() == 4 and not iothub.telemetry  # waiting in the outbox
    # Backoff: the attempts were spaced (FAST: 0.2 s doubling to 1 s), not a tight loop.
    attempts = dps.connects
    end = time.monotonic() + 1.5
    a.until(lambda: time.monotonic() > end, 5, "1.5 s of turns")
    assert dps.connects - attempts <= 3
    dps.down = False
    a.connected(timeout=20)
    delivered(a, iothub, seqs, "dps-down-1")
    assert sorted(int(r.custom["seq"]) for r in iothub.telemetry) == seqs


# --- the command line -------------------------------------------------------------------------


def run_agent(data: Path, config: Path, args: list[str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IOTHUB_")}  # only what the test gives
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--data-dir", str(data), "--config", str(config),
         *args], stderr=subprocess.PIPE, text=True, env=env)


def wait_status(proc: subprocess.Popen[str], data: Path, predicate: Callable[[dict[str, Any]], bool],
                timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while True:
        try:
            doc = json.loads((data / "status.json").read_text())
        except (OSError, ValueError):
            doc = {}
        if doc.get("pid") == proc.pid and predicate(doc):
            return doc
        if proc.poll() is not None:
            pytest.fail(f"micro-agent run exited ({proc.returncode}) before {what}: "
                        f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s; status {doc.get('uplink')}")
        time.sleep(0.1)


@pytest.mark.timeout(120)
def test_micro_agent_run_with_a_group_enrollment_provisions_then_reuses_the_assignment(
    iothub: Hub, dps: Dps, tmp_path: Path
) -> None:
    group_key = dps.group("fleet")
    key = key_file(tmp_path / "group.key", group_key)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(ALL_OFF))
    data = tmp_path / "data"
    args = ["--dps-id-scope", dps.id_scope, "--dps-registration-id", "dps-group-1",
            "--dps-endpoint", ENDPOINT, "--dps-group-key-file", key,
            "--ca-file", str(dps.hub.certs.ca.cert)]
    stderr = []
    for run in (1, 2):
        proc = run_agent(data, config, args)
        try:
            doc = wait_status(proc, data, lambda d: d["uplink"]["state"] == "connected", 60,
                              f"run {run} connected")
            assert doc["uplink"]["hub"] == "localhost" and doc["uplink"]["identity"] == "dps-group-1"
            assert doc["uplink"]["dps"]["auth"] == "group"
            iothub.wait_for_reported(lambda r: "latest_state" in r, timeout=10)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            stderr.append(err)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert [(r.registration_id, r.auth) for r in dps.registrations] == [("dps-group-1", "group")]
    assert "dps: assigned to IoT Hub localhost as dps-group-1" in stderr[0]
    assert "the assignment stored in" in stderr[1] and "dps: provisioning" not in stderr[1]
    device_key = group_device_key(group_key, "dps-group-1")
    assert all(group_key not in err and device_key not in err for err in stderr)
    # The same settings and a connection string: refused with a reason, at start.
    cs = key_file(tmp_path / "cs", iothub.identity("dps-group-1").connection_string())
    proc = run_agent(data, config, [*args, "--connection-string-file", cs])
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "choose one" in err


# --- the local configuration file -------------------------------------------------------------


def test_settings_from_the_local_file_come_after_the_options_and_the_environment(tmp_path: Path) -> None:
    from agent.config.local import LocalSettingError, load_dps_files

    key = base64.b64encode(b"k" * 32).decode()
    good = key_file(tmp_path / "key", key)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"IothubModule_DpsIdScope": "0ne0003",
                                  "IothubModule_DpsRegistrationId": "file-dev",
                                  "IothubModule_DpsEndpoint": "dps.example.net",
                                  "IothubModule_DpsGroupKeyFile": good}))
    local = load_dps_files(config)
    assert local == {"id_scope": "0ne0003", "registration_id": "file-dev",
                     "endpoint": "dps.example.net", "group_key_file": good}
    settings = DpsSettings.load(environ={}, local=local)
    assert settings is not None
    assert (settings.id_scope, settings.registration_id, settings.endpoint, settings.auth) == (
        "0ne0003", "file-dev", "dps.example.net", AUTH_GROUP)
    assert settings.device_key == derive_device_key(key, "file-dev")
    # The environment wins over the file, the command line over both.
    env = {"IOTHUB_DPS_REGISTRATION_ID": "env-dev"}
    assert DpsSettings.load(environ=env, local=local).registration_id == "env-dev"  # type: ignore[union-attr]
    assert DpsSettings.load(registration_id="cli-dev", environ=env,
                            local=local).registration_id == "cli-dev"  # type: ignore[union-attr]
    # The key file named in the local file passes the connection string's permission checks.
    loose = key_file(tmp_path / "loose", key, 0o640)
    with pytest.raises(IdentityError) as err:
        DpsSettings.load(environ={}, local={**local, "group_key_file": loose})
    assert "chmod 600" in str(err.value) and key not in str(err.value)
    # A value that is not a string is refused, naming the setting; no ID scope in the file is
    # no DPS; a twin cannot carry them (local only).
    config.write_text(json.dumps({"IothubModule_DpsIdScope": 7}))
    with pytest.raises(LocalSettingError, match="IothubModule_DpsIdScope"):
        load_dps_files(config)
    config.write_text(json.dumps({"IothubModule_DpsRegistrationId": "file-dev"}))
    assert DpsSettings.load(environ={}, local=load_dps_files(config)) is None
    store = ConfigStore(str(config))
    assert store.latest_invalid_fields == ()
    store.apply_patch({"IothubModule_DpsIdScope": "0ne0004"})
    assert "IothubModule_DpsIdScope" in store.latest_invalid_fields


@pytest.mark.timeout(120)
def test_micro_agent_run_provisions_from_settings_given_only_in_the_local_file(
    iothub: Hub, dps: Dps, tmp_path: Path
) -> None:
    key = key_file(tmp_path / "device.key", dps.individual("dps-file-1"))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**ALL_OFF,
                                  "IothubModule_DpsIdScope": dps.id_scope,
                                  "IothubModule_DpsRegistrationId": "dps-file-1",
                                  "IothubModule_DpsEndpoint": ENDPOINT,
                                  "IothubModule_DpsSymmetricKeyFile": key,
                                  "IothubModule_DpsCaFile": str(dps.hub.certs.ca.cert)}))
    data = tmp_path / "data"
    proc = run_agent(data, config, [])  # nothing on the command line, nothing in the environment
    try:
        doc = wait_status(proc, data, lambda d: d["uplink"]["state"] == "connected", 60, "connected")
        assert doc["uplink"]["identity"] == "dps-file-1" and doc["uplink"]["dps"]["auth"] == "symmetric"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [(r.registration_id, r.auth) for r in dps.registrations] == [("dps-file-1", "symmetric")]
    assert "dps: assigned to IoT Hub localhost as dps-file-1" in err
    assert dps.individual("dps-file-1") not in err
    # A key file named there that others can read: refused at start, exit code 2.
    (tmp_path / "device.key").chmod(0o644)
    proc = run_agent(tmp_path / "data2", config, [])
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "chmod 600" in err
