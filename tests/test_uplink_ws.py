"""The uplink's transport settings (agent.config.local): MQTT over WebSockets on 443 and an
HTTP CONNECT proxy, against the stand-in (tests/hub/: its gate also serves WebSockets behind
the same TLS and checks) and Debian's tinyproxy (tests/hub/proxy.py), with the real SDK.

The SDK connects WebSockets to port 443 and nothing else (azure-iot-device 2.14.0,
mqtt_transport.connect), so the end-to-end tests bind 127.0.0.1:443 and need root.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub.broker import BrokerError, Certificates
from hub.hub import Hub
from hub.proxy import TinyProxy
from test_uplink_iothub import ALL_OFF, HubAgent, module, seqs_of

from agent.config import ConfigStore
from agent.config.local import (
    LOCAL_ONLY_REASON,
    PROXY_CONFIG,
    TRANSPORT_PROTOCOL,
    LocalSettingError,
    ProxySettings,
    TransportProtocol,
    UplinkTransport,
    load_transport,
    parse_proxy_config,
    parse_transport_protocol,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)

WS = UplinkTransport(TransportProtocol.MQTT_WEBSOCKET)
PASSWORD = "pr0xy-Secret,with:comma"
# tinyproxy 1.11's configuration takes no ',' or ':' in a BasicAuth password.
PROXY_PASSWORD = "pr0xy-Secret.for_tinyproxy"


# --- the settings (no hub) -----------------------------------------------------------------------


def test_transport_protocol_values_and_amqp_refused_with_the_reason() -> None:
    assert parse_transport_protocol("MQTT", "t") is TransportProtocol.MQTT
    assert parse_transport_protocol(" mqtt_websocket_protocol ", "t") is TransportProtocol.MQTT_WEBSOCKET
    for amqp in ("AMQP", "AMQP_WebSocket_Protocol", "amqp"):
        with pytest.raises(LocalSettingError, match="MQTT only \\(no AMQP\\)"):
            parse_transport_protocol(amqp, "t")
    for bad in ("HTTP", "", 443):
        with pytest.raises(LocalSettingError):
            parse_transport_protocol(bad, "t")
    assert UplinkTransport(TransportProtocol.MQTT_WEBSOCKET).port == 443
    assert UplinkTransport().port == 8883


def test_proxy_config_forms_and_the_password_never_shown() -> None:
    assert parse_proxy_config("", "t") is None
    assert parse_proxy_config("proxy.corp,3128", "t") == ProxySettings("proxy.corp", 3128)
    # The password is the rest of the value: it may hold commas.
    proxy = parse_proxy_config(f"10.0.0.1, 8080, bob,{PASSWORD}", "t")
    assert proxy == ProxySettings("10.0.0.1", 8080, "bob", PASSWORD)
    assert proxy is not None
    shown = repr(proxy) + proxy.describe() + repr(UplinkTransport(proxy=proxy))
    assert PASSWORD not in shown and "bob" in shown
    assert UplinkTransport(proxy=proxy).secrets() == [PASSWORD]
    for bad, why in [("proxy.corp", "must be"), ("proxy.corp,0", "port"), ("proxy.corp,http", "port"),
                     ("-bad-,80", "host"), (f"p,80,,{PASSWORD}", "no user"),
                     (f"p,80,a:b,{PASSWORD}", "user cannot")]:
        with pytest.raises(LocalSettingError, match=why) as err:
            parse_proxy_config(bad, "t")
        assert PASSWORD not in str(err.value)


@pytest.mark.root
def test_a_proxy_password_needs_a_private_file(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({TRANSPORT_PROTOCOL: "MQTT_WebSocket_Protocol",
                                  PROXY_CONFIG: f"127.0.0.1,3128,bob,{PASSWORD}"}))
    config.chmod(0o644)
    with pytest.raises(LocalSettingError, match="lets group or others access it") as err:
        load_transport(config)
    assert PASSWORD not in str(err.value)
    config.chmod(0o600)
    transport = load_transport(config)
    assert transport == UplinkTransport(TransportProtocol.MQTT_WEBSOCKET,
                                        ProxySettings("127.0.0.1", 3128, "bob", PASSWORD))
    # Without a password the file may be readable by all (it holds no secret).
    config.write_text(json.dumps({PROXY_CONFIG: "127.0.0.1,3128,bob"}))
    config.chmod(0o644)
    assert load_transport(config).proxy == ProxySettings("127.0.0.1", 3128, "bob")
    # The command line wins, and takes the password from a private file only.
    secret = tmp_path / "proxy-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o640)
    with pytest.raises(LocalSettingError, match="lets group or others"):
        load_transport(config, proxy="10.1.1.1,8080,eve", proxy_password_file=str(secret))
    secret.chmod(0o600)
    got = load_transport(config, protocol="MQTT", proxy="10.1.1.1,8080,eve",
                         proxy_password_file=str(secret))
    assert got == UplinkTransport(TransportProtocol.MQTT, ProxySettings("10.1.1.1", 8080, "eve", PASSWORD))
    with pytest.raises(LocalSettingError, match="visible to every user"):
        load_transport(config, proxy=f"10.1.1.1,8080,eve,{PASSWORD}")
    with pytest.raises(LocalSettingError, match="needs a proxy with a user"):
        load_transport(None, proxy="10.1.1.1,8080", proxy_password_file=str(secret))
    assert load_transport(tmp_path / "absent.json") == UplinkTransport()


def test_the_twin_cannot_set_local_only_settings(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({TRANSPORT_PROTOCOL: "MQTT_WebSocket_Protocol",
                                  PROXY_CONFIG: "127.0.0.1,3128", "Heartbeat_Disabled": True}))
    store = ConfigStore(str(config))
    assert store.latest_invalid_fields == ()  # allowed in the local file
    update = store.apply_desired({TRANSPORT_PROTOCOL: "MQTT", "$version": 3})
    assert update.invalid_fields == (TRANSPORT_PROTOCOL,)
    assert store.invalid_reasons[TRANSPORT_PROTOCOL] == "twin: " + LOCAL_ONLY_REASON
    store.apply_patch({PROXY_CONFIG: "10.0.0.1,80", TRANSPORT_PROTOCOL: None})
    assert store.latest_invalid_fields == (PROXY_CONFIG,)
    assert load_transport(config) == UplinkTransport(TransportProtocol.MQTT_WEBSOCKET,
                                                     ProxySettings("127.0.0.1", 3128))


# --- end to end ----------------------------------------------------------------------------------


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the SDK's WebSockets port is 443: binding it needs root")


@pytest.fixture
def ws_hub(iothub: Hub) -> Hub:
    _need_root()
    iothub.listen_websockets(443)
    return iothub


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[list[TinyProxy]]:
    made: list[TinyProxy] = []
    yield made
    for proxy in made:
        proxy.stop()


def tinyproxy(proxies: list[TinyProxy], tmp_path: Path, user: str | None = None,
              password: str | None = None) -> TinyProxy:
    try:
        proxy = TinyProxy(tmp_path / f"proxy{len(proxies)}", user, password)
    except BrokerError as err:
        from conftest import skip_unless_ci

        skip_unless_ci(str(err))
        raise
    proxies.append(proxy)
    proxy.start()
    return proxy


def run_over(transport: UplinkTransport, hub: Hub, certs: Certificates, tmp_path: Path,
             agents: list[HubAgent]) -> HubAgent:
    a = HubAgent(tmp_path / f"data{len(agents)}", module(hub, certs),
                 uplink_kwargs={"transport": transport})
    agents.append(a)
    return a


@pytest.fixture
def agents() -> Iterator[list[HubAgent]]:
    made: list[HubAgent] = []
    yield made
    for a in made:
        a.close()


def telemetry_and_twin(a: HubAgent, hub: Hub) -> None:
    """Batches arrive in order and a desired patch is applied and reported."""
    a.connected()
    seqs = [a.put("Low", [{"t": "test", "n": n}]) for n in range(5)]
    assert seqs_of(a.telemetry(hub, 5)) == seqs
    hub.set_desired({"Heartbeat_Disabled": False})
    a.until(lambda: hub.reported.get("Heartbeat_Disabled") is False, 10, "the patch reported")


@pytest.mark.timeout(120)
def test_websockets_on_443(ws_hub: Hub, hub_certs: Certificates, tmp_path: Path,
                           agents: list[HubAgent]) -> None:
    before = ws_hub.gate.websocket_upgrades
    a = run_over(WS, ws_hub, hub_certs, tmp_path, agents)
    telemetry_and_twin(a, ws_hub)
    assert ws_hub.gate.websocket_upgrades == before + 1
    assert ws_hub.gate.decisions()[-1][1:] == (True, "SAS token valid")
    status = a.uplink.status()
    assert status["transport"] == "MQTT over WebSockets (443)"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("auth", [False, True], ids=["open", "basic-auth"])
def test_websockets_through_an_http_proxy(auth: bool, ws_hub: Hub, hub_certs: Certificates,
                                          tmp_path: Path, agents: list[HubAgent],
                                          proxies: list[TinyProxy], caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    user, password = ("alice", PROXY_PASSWORD) if auth else (None, None)
    proxy = tinyproxy(proxies, tmp_path, user, password)
    before = ws_hub.gate.websocket_upgrades
    transport = UplinkTransport(TransportProtocol.MQTT_WEBSOCKET,
                                ProxySettings("127.0.0.1", proxy.port, user, password))
    a = run_over(transport, ws_hub, hub_certs, tmp_path, agents)
    telemetry_and_twin(a, ws_hub)
    assert proxy.tunnels() == ["localhost:443"], proxy.log_tail()
    assert ws_hub.gate.websocket_upgrades == before + 1
    assert PROXY_PASSWORD not in caplog.text


@pytest.mark.timeout(180)
def test_proxy_down_or_refusing_is_a_state_with_backoff_and_nothing_is_lost(
    ws_hub: Hub, hub_certs: Certificates, tmp_path: Path, agents: list[HubAgent],
    proxies: list[TinyProxy], caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = tinyproxy(proxies, tmp_path, "alice", "another-password")
    proxy.stop()  # down first
    transport = UplinkTransport(TransportProtocol.MQTT_WEBSOCKET,
                                ProxySettings("127.0.0.1", proxy.port, "alice", PROXY_PASSWORD))
    a = run_over(transport, ws_hub, hub_certs, tmp_path, agents)
    stored = [a.put("Medium", [{"t": "test", "n": n}]) for n in range(3)]
    a.until(lambda: a.state().startswith("disconnected:"), 20, "disconnected (proxy down)")
    down = a.state()
    assert f"proxy 127.0.0.1:{proxy.port}: " in down and "Connection refused" in down, down
    # Refusing: up, but the agent's password is not the one it takes (401).
    proxy.start()
    a.until(lambda: "401" in a.state(), 30, "the proxy's refusal reported")
    assert a.state().startswith(f"disconnected: proxy 127.0.0.1:{proxy.port}: "), a.state()
    stored += [a.put("Medium", [{"t": "test", "n": n}]) for n in range(3, 6)]
    attempts = a.uplink.status()["state_changes"].get("connecting", 0)
    a.spin(3.0)
    # Backoff (0.2 s doubling to 1 s here): a handful of attempts, not one per turn.
    assert a.uplink.status()["state_changes"].get("connecting", 0) - attempts <= 6
    assert a.depth() == 6 and not ws_hub.telemetry
    # The proxy comes back with the agent's password: everything arrives, in order.
    proxy.stop()
    proxy.password = PROXY_PASSWORD
    proxy.start()
    a.connected(30)
    assert seqs_of(a.telemetry(ws_hub, 6)) == stored
    a.until(lambda: a.depth() == 0, 10, "the outbox drained")
    assert PROXY_PASSWORD not in caplog.text


@pytest.mark.timeout(120)
def test_micro_agent_run_over_websockets_through_an_authenticating_proxy(
    ws_hub: Hub, hub_certs: Certificates, tmp_path: Path, proxies: list[TinyProxy]
) -> None:
    """The local configuration file's settings, with the proxy password in it (mode 0600)."""
    proxy = tinyproxy(proxies, tmp_path, "alice", PROXY_PASSWORD)
    cs_file = tmp_path / "connection_string"
    cs_file.write_text(ws_hub.identity("dev1", "iot-micro-agent").connection_string() + "\n")
    cs_file.chmod(0o600)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**ALL_OFF, "Heartbeat_Disabled": False,
                                  TRANSPORT_PROTOCOL: "MQTT_WebSocket_Protocol",
                                  PROXY_CONFIG: f"127.0.0.1,{proxy.port},alice,{PROXY_PASSWORD}"}))
    config.chmod(0o600)
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "IOTHUB_CONNECTION_STRING"}
    cmd = [sys.executable, "-m", "agent.cli", "run", "--data-dir", str(data), "--config",
           str(config), "--connection-string-file", str(cs_file), "--ca-file",
           str(hub_certs.ca.cert), "--log-level", "debug"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                uplink = json.loads((data / "status.json").read_text()).get("uplink", {})
            except (OSError, ValueError):
                uplink = {}
            if uplink.get("state") == "connected":
                break
            assert proc.poll() is None and time.monotonic() < deadline, uplink
            time.sleep(0.2)
        assert uplink["transport"] == (f"MQTT over WebSockets (443) through HTTP proxy "
                                       f"127.0.0.1:{proxy.port} as alice")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert ws_hub.wait_for_telemetry(1, timeout=5)
    assert proxy.tunnels() == ["localhost:443"]
    assert PROXY_PASSWORD not in err
    # The same file readable by others is refused at start, without the password.
    config.chmod(0o644)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 2 and "lets group or others access it" in done.stderr
    assert PROXY_PASSWORD not in done.stderr + done.stdout
