"""The IoT Hub stand-in (tests/hub/) against the real azure-iot-device 2.14.0 SDK, over real
TLS, through Debian's mosquitto: twin GET, reported and desired patches, telemetry with its
properties, outages with persistence, and the identity checks (SAS, X.509, wrong key, wrong
CA). See tests/hub/README.md.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# The SDK builds its TLS contexts with ssl.PROTOCOL_TLSv1_2, deprecated since Python 3.10.
pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"
)

import azure.iot.device as azure_device
import azure.iot.device.exceptions as azure_exceptions
from hub.broker import Certificates
from hub.gate import ProtocolError, check_sas, make_sas_token, parse_connect, sas_signature
from hub.hub import Hub, Identity, merge_patch, parse_property_bag

IoTHubDeviceClient = azure_device.IoTHubDeviceClient
IoTHubModuleClient = azure_device.IoTHubModuleClient
Message = azure_device.Message
X509 = azure_device.X509

MODULE = ("dev1", "iot-micro-agent")
# Seconds an SDK call may take before a test calls it hung (they block with no timeout).
CALL_TIMEOUT = 15.0
# The SDK waits this long between reconnect attempts (its default is 10 s).
RETRY_INTERVAL = 1


def call(fn: Callable[[], Any], timeout: float = CALL_TIMEOUT) -> Any:
    """Run a blocking SDK call in a thread; return its result or raise its exception; fail
    the test when it does not return within timeout."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as error:  # noqa: BLE001 (handed to the test thread)
            outcome.append((False, error))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {timeout} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def clients() -> Iterator[list[Any]]:
    """SDK clients a test made; each is shut down afterwards."""
    made: list[Any] = []
    yield made
    for client in made:
        call(client.shutdown)


def module_client(
    clients: list[Any], hub: Hub, certs: Certificates, connection_string: str, **kwargs: Any
) -> Any:
    kwargs.setdefault("server_verification_cert", certs.ca_pem)
    kwargs.setdefault("connection_retry_interval", RETRY_INTERVAL)
    client = IoTHubModuleClient.create_from_connection_string(connection_string, **kwargs)
    clients.append(client)
    return client


def x509_device_client(
    clients: list[Any], hub: Hub, certs: Certificates, identity: Identity, cert: Any
) -> Any:
    client = IoTHubDeviceClient.create_from_x509_certificate(
        X509(str(cert.cert), str(cert.key)),
        hostname=hub.hostname,
        device_id=identity.device_id,
        gateway_hostname=hub.gateway,
        server_verification_cert=certs.ca_pem,
        connection_retry_interval=RETRY_INTERVAL,
    )
    clients.append(client)
    return client


class DesiredPatches:
    """The client's desired-patch handler: every patch, in order, with an event per arrival."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, patch: dict[str, Any]) -> None:
        with self._cond:
            self.patches.append(patch)
            self._cond.notify_all()

    def wait_for(self, version: int, timeout: float) -> dict[str, Any] | None:
        """The patch with "$version" == version, or None when it did not come in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for patch in self.patches:
                    if patch.get("$version") == version:
                        return patch
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


def connected_module(
    clients: list[Any], iothub: Hub, certs: Certificates
) -> tuple[Any, DesiredPatches]:
    """A module client through the stand-in, connected, its twin read once, then its
    desired-patch handler set (in that order: the SDK can lose its own first twin request when
    the handler comes first)."""
    identity = iothub.identity(*MODULE)
    client = module_client(clients, iothub, certs, identity.connection_string())
    call(client.connect)
    call(client.get_twin)
    patches = DesiredPatches()
    client.on_twin_desired_properties_patch_received = patches
    return client, patches


# --- the twin ---------------------------------------------------------------------------


def test_get_twin_returns_what_the_hub_holds(
    iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    iothub.set_twin({"interval": 30, "sources": {"audit": True, "cnproc": False}}, {"seen": 1})
    identity = iothub.identity(*MODULE)
    client = module_client(clients, iothub, hub_certs, identity.connection_string())
    call(client.connect)
    twin = call(client.get_twin)
    assert twin == iothub.twin()
    assert twin["desired"]["sources"] == {"audit": True, "cnproc": False}
    assert twin["desired"]["$version"] == 2 and twin["reported"]["$version"] == 2
    assert iothub.twin_requests == 1
    assert iothub.gate.decisions()[-1] == (identity.client_id, True, "SAS token valid")


def test_reported_patch_merges_and_bumps_version(
    iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    client, _ = connected_module(clients, iothub, hub_certs)
    before = iothub.reported["$version"]
    call(lambda: client.patch_twin_reported_properties({"agent": {"version": "0.1.0", "up": 5}}))
    assert iothub.reported == {"agent": {"version": "0.1.0", "up": 5}, "$version": before + 1}
    call(lambda: client.patch_twin_reported_properties({"agent": {"up": None, "ok": True}}))
    assert iothub.reported == {"agent": {"version": "0.1.0", "ok": True}, "$version": before + 2}
    # The device reads back what it reported.
    assert call(client.get_twin)["reported"] == iothub.reported
    assert iothub.reported_patches == [
        {"agent": {"version": "0.1.0", "up": 5}},
        {"agent": {"up": None, "ok": True}},
    ]


def test_desired_patch_reaches_the_handler_within_1s(
    iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    client, patches = connected_module(clients, iothub, hub_certs)
    version = iothub.set_desired({"interval": 10})
    patch = patches.wait_for(version, timeout=1.0)
    assert patch == {"interval": 10, "$version": version}
    # Applied and reported back, as the agent will do, within the same second.
    started = time.monotonic()
    version2 = iothub.set_desired({"interval": 20, "nested": {"a": 1}})
    got = patches.wait_for(version2, timeout=1.0)
    assert got is not None
    call(lambda: client.patch_twin_reported_properties({"interval": got["interval"]}))
    iothub.wait_for_reported(
        lambda r: r.get("interval") == 20, timeout=1.0 - (time.monotonic() - started)
    )
    assert iothub.desired == {"interval": 20, "nested": {"a": 1}, "$version": version2}
    assert [p["$version"] for p in patches.patches] == [version, version2]


# --- telemetry --------------------------------------------------------------------------


def test_message_arrives_with_its_properties(
    iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    client, _ = connected_module(clients, iothub, hub_certs)
    payload = bytes(range(256))  # not UTF-8: batches are binary msgpack
    message = Message(
        payload, message_id="batch-7", content_encoding="utf-8", content_type="application/msgpack"
    )
    message.custom_properties["seq"] = "7"
    message.custom_properties["kind"] = "a b&c=d/é"
    message.set_as_security_message()
    call(lambda: client.send_message(message))
    (record,) = iothub.wait_for_telemetry(1)
    assert record.payload == payload
    assert (record.device_id, record.module_id) == MODULE
    assert record.content_type == "application/msgpack"
    assert record.content_encoding == "utf-8"
    assert record.message_id == "batch-7"
    assert record.custom == {"seq": "7", "kind": "a b&c=d/é"}
    # The security-message marker the SDK sets.
    assert record.system["iothub_interface_id"] == "urn:azureiot:Security:SecurityAgent:1"
    assert record.topic.startswith("devices/dev1/modules/iot-micro-agent/messages/events/")
    assert record.arrived <= time.time()
    assert iothub.unexpected == []


def test_messages_arrive_in_order(iothub: Hub, hub_certs: Certificates, clients: list[Any]) -> None:
    client, _ = connected_module(clients, iothub, hub_certs)
    count = 200
    for seq in range(count):
        message = Message(json.dumps({"seq": seq}).encode(), content_type="application/json")
        message.custom_properties["seq"] = str(seq)
        call(functools.partial(client.send_message, message))
    records = iothub.wait_for_telemetry(count)
    assert len(records) == count
    assert [json.loads(r.payload)["seq"] for r in records] == list(range(count))
    assert [r.custom["seq"] for r in records] == [str(seq) for seq in range(count)]


# --- outages ----------------------------------------------------------------------------


@pytest.mark.parametrize("kill", [True, False], ids=["sigkill", "sigterm"])
def test_broker_restart_client_resumes(
    kill: bool, iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    identity = iothub.identity(*MODULE)
    client = module_client(clients, iothub, hub_certs, identity.connection_string())
    call(client.connect)
    call(client.get_twin)
    call(lambda: client.send_message(Message(b"before")))
    iothub.wait_for_telemetry(1)
    # The desired-patch subscription is the last thing the broker saw before it goes down.
    patches = DesiredPatches()
    client.on_twin_desired_properties_patch_received = patches

    if kill:
        iothub.kill()
    else:
        iothub.stop()
    wait_until(lambda: not client.connected, 10, "the client noticed the outage")
    # The SDK does not queue: a send during the outage fails at once, and clearly.
    with pytest.raises(azure_exceptions.ClientError):
        call(lambda: client.send_message(Message(b"during")))

    iothub.start()
    wait_until(lambda: client.connected, 10 * RETRY_INTERVAL + 5, "the client reconnected")
    # Nothing resubscribes after a reconnect: the patch arrives only because mosquitto came
    # back with the client's saved session.
    version = iothub.set_desired({"after": "restart"})
    assert patches.wait_for(version, timeout=5.0) == {"after": "restart", "$version": version}
    call(lambda: client.send_message(Message(b"after")))
    records = iothub.wait_for_telemetry(2)
    assert [r.payload for r in records] == [b"before", b"after"]
    assert call(client.get_twin)["desired"]["after"] == "restart"


def test_queued_messages_survive_a_kill(
    iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    """Messages the broker acknowledged while the hub side was away are delivered after a
    SIGKILL and restart: the hub's session and its queue were saved."""
    client, _ = connected_module(clients, iothub, hub_certs)
    iothub.pause_hub_client()
    for seq in range(20):
        call(functools.partial(client.send_message, Message(str(seq).encode())))  # PUBACKed
    assert iothub.telemetry == []
    iothub.restart(kill=True)
    wait_until(lambda: client.connected, 10 * RETRY_INTERVAL + 5, "the client reconnected")
    for seq in range(20, 40):
        call(functools.partial(client.send_message, Message(str(seq).encode())))
    records = iothub.wait_for_telemetry(40)
    payloads = [int(r.payload) for r in records]
    # QoS 1 may repeat a message, never lose one; the order holds.
    assert sorted(set(payloads)) == list(range(40))
    assert payloads == sorted(payloads)


def test_held_replies_keep_a_send_in_flight_until_the_kill(
    iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    """hold_replies(): the broker gets the message, the device never gets its PUBACK, so its
    send stays in flight; after a kill the SDK publishes it again on its next connection and
    the send completes."""
    client, _ = connected_module(clients, iothub, hub_certs)
    iothub.hold_replies()
    done = threading.Event()
    threading.Thread(target=lambda: (client.send_message(Message(b"held")), done.set()),
                     daemon=True).start()
    wait_until(lambda: iothub.held_pubacks() == 1, 10, "the PUBACK held")
    assert [r.payload for r in iothub.wait_for_telemetry(1)] == [b"held"]  # mosquitto has it
    assert not done.wait(1.0)  # still in flight
    iothub.restart(kill=True)
    assert done.wait(10 * RETRY_INTERVAL + 5), "the send completed after the reconnect"
    assert iothub.held_pubacks() == 0
    call(lambda: client.send_message(Message(b"after")))  # and PUBACKs flow again
    assert iothub.wait_for_telemetry(3)[-1].payload == b"after"


def test_broker_down_behind_the_gate(
    iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    identity = iothub.identity(*MODULE)
    iothub.broker.stop()
    client = module_client(clients, iothub, hub_certs, identity.connection_string())
    with pytest.raises(azure_exceptions.ConnectionFailedError):
        call(client.connect)
    who, accepted, reason = iothub.gate.decisions()[-1]
    assert (who, accepted) == (identity.client_id, False) and reason.startswith(
        "broker unreachable"
    )
    iothub.start()
    call(client.connect)
    call(lambda: client.send_message(Message(b"back")))
    assert iothub.wait_for_telemetry(1)[0].payload == b"back"


# --- identities -------------------------------------------------------------------------


def test_wrong_key_is_rejected(iothub: Hub, hub_certs: Certificates, clients: list[Any]) -> None:
    identity = iothub.identity(*MODULE)
    wrong = base64.b64encode(hashlib.sha256(b"not the key").digest()).decode()
    client = module_client(clients, iothub, hub_certs, identity.connection_string(key=wrong))
    with pytest.raises(azure_exceptions.CredentialError) as caught:
        call(client.connect)
    assert "not authorised" in str(caught.value.__cause__)
    assert iothub.gate.decisions()[-1] == (
        identity.client_id,
        False,
        "signature does not match the identity's key",
    )
    assert not client.connected


def test_expired_token_is_rejected(
    iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    identity = iothub.identity(*MODULE)
    client = IoTHubModuleClient.create_from_sastoken(
        identity.sas_token(ttl=1),
        gateway_hostname=iothub.gateway,
        server_verification_cert=hub_certs.ca_pem,
    )
    clients.append(client)
    time.sleep(2.1)
    with pytest.raises(azure_exceptions.CredentialError):
        call(client.connect)
    who, accepted, reason = iothub.gate.decisions()[-1]
    assert (who, accepted) == (identity.client_id, False) and reason.startswith("token expired")


def test_a_valid_sas_token_connects(
    iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    identity = iothub.identity(*MODULE)
    client = IoTHubModuleClient.create_from_sastoken(
        identity.sas_token(),
        gateway_hostname=iothub.gateway,
        server_verification_cert=hub_certs.ca_pem,
    )
    clients.append(client)
    call(client.connect)
    call(lambda: client.send_message(Message(b"token")))
    assert iothub.wait_for_telemetry(1)[0].payload == b"token"


def test_unknown_identity_is_rejected(
    iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    stranger = Identity(
        iothub.hostname,
        iothub.gateway,
        "nobody",
        "iot-micro-agent",
        iothub.identity(*MODULE).key,
        None,
    )
    client = module_client(clients, iothub, hub_certs, stranger.connection_string())
    with pytest.raises(azure_exceptions.ClientError):
        call(client.connect)
    assert iothub.gate.decisions()[-1] == (
        "nobody/iot-micro-agent",
        False,
        "unknown client id 'nobody/iot-micro-agent'",
    )


def test_wrong_ca_fails_clearly(iothub: Hub, hub_certs: Certificates, clients: list[Any]) -> None:
    identity = iothub.identity(*MODULE)
    client = module_client(
        clients,
        iothub,
        hub_certs,
        identity.connection_string(),
        server_verification_cert=hub_certs.other_ca().cert.read_text(),
    )
    decisions = len(iothub.gate.decisions())
    with pytest.raises(azure_exceptions.ClientError) as caught:
        call(client.connect)
    assert "TLS" in str(caught.value)
    assert not client.connected
    # The client gave up in the handshake: the gate never saw a CONNECT.
    assert len(iothub.gate.decisions()) == decisions


def test_device_identity(iothub: Hub, hub_certs: Certificates, clients: list[Any]) -> None:
    identity = iothub.identity("dev-plain")
    iothub.set_twin({"interval": 3})
    client = IoTHubDeviceClient.create_from_connection_string(
        identity.connection_string(), server_verification_cert=hub_certs.ca_pem
    )
    clients.append(client)
    call(client.connect)
    assert call(client.get_twin)["desired"] == iothub.desired
    message = Message(b"device", content_type="application/msgpack")
    call(lambda: client.send_message(message))
    (record,) = iothub.wait_for_telemetry(1)
    assert (record.device_id, record.module_id, record.payload) == ("dev-plain", None, b"device")
    assert record.topic.startswith("devices/dev-plain/messages/events/")
    assert record.content_type == "application/msgpack"
    # A module's key does not open the device.
    other = IoTHubDeviceClient.create_from_connection_string(
        identity.connection_string(key=iothub.identity(*MODULE).key),
        server_verification_cert=hub_certs.ca_pem,
    )
    clients.append(other)
    with pytest.raises(azure_exceptions.CredentialError):
        call(other.connect)


def test_x509_identity(iothub: Hub, hub_certs: Certificates, clients: list[Any]) -> None:
    identity = iothub.x509_identity("dev-x509")
    assert identity.x509 is not None
    client = x509_device_client(clients, iothub, hub_certs, identity, identity.x509)
    call(client.connect)
    assert iothub.gate.decisions()[-1] == ("dev-x509", True, "X.509 CN=dev-x509")
    call(lambda: client.patch_twin_reported_properties({"x509": True}))
    assert iothub.reported["x509"] is True
    call(lambda: client.send_message(Message(b"cert")))
    assert iothub.wait_for_telemetry(1)[0].device_id == "dev-x509"


def test_x509_module_identity(iothub: Hub, hub_certs: Certificates, clients: list[Any]) -> None:
    identity = iothub.x509_identity("dev-x509", "iot-micro-agent")
    assert identity.x509 is not None
    client = IoTHubModuleClient.create_from_x509_certificate(
        X509(str(identity.x509.cert), str(identity.x509.key)),
        hostname=iothub.hostname,
        device_id=identity.device_id,
        module_id=identity.module_id,
        gateway_hostname=iothub.gateway,
        server_verification_cert=hub_certs.ca_pem,
    )
    clients.append(client)
    call(client.connect)
    assert iothub.gate.decisions()[-1] == ("dev-x509/iot-micro-agent", True, "X.509 CN=dev-x509")
    call(lambda: client.send_message(Message(b"module cert")))
    (record,) = iothub.wait_for_telemetry(1)
    assert (record.device_id, record.module_id) == ("dev-x509", "iot-micro-agent")


def test_x509_certificate_of_another_device_is_rejected(
    iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    identity = iothub.x509_identity("dev-x509")
    someone_else = hub_certs.client("dev-other")  # signed by the right CA, wrong CN
    client = x509_device_client(clients, iothub, hub_certs, identity, someone_else)
    with pytest.raises(azure_exceptions.CredentialError):
        call(client.connect)
    assert iothub.gate.decisions()[-1] == (
        "dev-x509",
        False,
        "certificate CN 'dev-other' is not device 'dev-x509'",
    )


def test_x509_certificate_from_an_untrusted_ca_is_rejected(
    iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    identity = iothub.x509_identity("dev-x509")
    forged = hub_certs.client("dev-x509", signer=hub_certs.other_ca())
    client = x509_device_client(clients, iothub, hub_certs, identity, forged)
    decisions = len(iothub.gate.decisions())
    with pytest.raises(azure_exceptions.ClientError):
        call(client.connect)
    assert not client.connected
    assert len(iothub.gate.decisions()) == decisions  # refused in the TLS handshake


def test_two_identities_on_two_hubs(
    iothub: Hub, iothub2: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    first, first_patches = connected_module(clients, iothub, hub_certs)
    second_identity = iothub2.identity("dev2", "iot-micro-agent")
    assert second_identity.connection_string().endswith("GatewayHostName=127.0.0.2")
    second = module_client(clients, iothub2, hub_certs, second_identity.connection_string())
    call(second.connect)
    call(second.get_twin)
    second_patches = DesiredPatches()
    second.on_twin_desired_properties_patch_received = second_patches

    call(lambda: first.patch_twin_reported_properties({"who": "first"}))
    call(lambda: second.patch_twin_reported_properties({"who": "second"}))
    assert iothub.reported["who"] == "first" and iothub2.reported["who"] == "second"

    version = iothub2.set_desired({"only": "second"})
    assert second_patches.wait_for(version, 2.0) == {"only": "second", "$version": version}
    call(lambda: first.send_message(Message(b"1")))
    call(lambda: second.send_message(Message(b"2")))
    assert [r.payload for r in iothub.wait_for_telemetry(1)] == [b"1"]
    assert [r.payload for r in iothub2.wait_for_telemetry(1)] == [b"2"]
    assert first_patches.patches == []


# --- the gate on its own ----------------------------------------------------------------


def test_gate_survives_garbage_and_serves_the_next_client(
    iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    context = ssl.create_default_context(cafile=str(hub_certs.ca.cert))
    before = len(iothub.gate.decisions())
    # (bytes, complete): a complete packet is refused at once; an incomplete one when the
    # client ends the TLS stream (close_notify), which the gate reads as end of input.
    garbage = [
        (b"", False),  # nothing at all
        (b"\x30\x00", True),  # PUBLISH first
        (b"\x10\xff\xff\xff\xff\x01", True),  # remaining length of five bytes
        (b"\x10\x05\x00\x04MQ", False),  # truncated
        (b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x09ab", True),  # client id past the end
    ]
    for raw, complete in garbage:
        with socket.create_connection((iothub.host, iothub.port), timeout=5) as plain:
            tls = context.wrap_socket(plain, server_hostname="localhost")
            tls.sendall(raw)
            if complete:
                try:
                    reply = tls.recv(16)
                except (ssl.SSLError, ConnectionError):
                    reply = b""
                assert reply == b"", "the gate answered garbage"  # closed, no CONNACK
            else:
                try:
                    tls.unwrap()
                except (ssl.SSLError, OSError):
                    pass  # the gate drops the connection without a close_notify of its own
    wait_until(
        lambda: len(iothub.gate.decisions()) == before + len(garbage), 5, "a decision on each"
    )
    reasons = [reason for _, accepted, reason in iothub.gate.decisions()[before:] if not accepted]
    assert len(reasons) == len(garbage)
    assert all(r.startswith(("no CONNECT", "malformed CONNECT")) for r in reasons), reasons
    # Still serving.
    client, _ = connected_module(clients, iothub, hub_certs)
    call(lambda: client.send_message(Message(b"ok")))
    assert iothub.wait_for_telemetry(1)[0].payload == b"ok"


def test_sas_check_matches_the_sdk_signature() -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    uri = "test-hub.azure-devices.net/devices/dev1/modules/iot-micro-agent"
    from azure.iot.device.common.auth.sastoken import RenewableSasToken
    from azure.iot.device.common.auth.signing_mechanism import SymmetricKeySigningMechanism

    signer = SymmetricKeySigningMechanism(key)  # type: ignore[no-untyped-call]
    sdk_token = str(RenewableSasToken(uri, signer, ttl=600))  # type: ignore[no-untyped-call]
    now = time.time()
    assert check_sas(sdk_token, uri, key, now) is None
    assert check_sas(make_sas_token(key, uri, 600), uri, key, now) is None
    fields = dict(p.split("=", 1) for p in sdk_token.split(" ", 1)[1].split("&"))
    assert urllib.parse.unquote(fields["sig"]) == sas_signature(key, uri, int(fields["se"]))
    other_key = base64.b64encode(bytes(32)).decode()
    assert (
        check_sas(sdk_token, uri, other_key, now) == "signature does not match the identity's key"
    )
    assert check_sas(sdk_token, uri + "x", key, now) is not None
    assert (check_sas(sdk_token, uri, key, now + 601) or "").startswith("token expired")
    assert check_sas("Basic abc", uri, key, now) == "password is not a SharedAccessSignature"
    assert check_sas("SharedAccessSignature sr=a&se=1", uri, key, now) == "token lacks sig"


def test_connect_parser_reads_will_and_credentials() -> None:
    def field(data: bytes) -> bytes:
        return len(data).to_bytes(2, "big") + data

    body = (
        field(b"MQTT")
        + bytes([4, 0x80 | 0x40 | 0x04, 0, 60])
        + field(b"dev1/mod")
        + field(b"will/topic")
        + field(b"bye")
        + field(b"user")
        + field(b"pw")
    )
    packet = parse_connect(body)
    assert (packet.protocol, packet.level, packet.client_id) == ("MQTT", 4, "dev1/mod")
    assert (packet.username, packet.password) == ("user", b"pw")


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        # A valid start with any flags, then anything: reaches the will and credential fields.
        st.builds(
            lambda flags, tail: b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c" + tail,
            st.integers(0, 255),
            st.binary(max_size=300),
        ),
    )
)
def test_connect_parser_refuses_any_garbage_cleanly(body: bytes) -> None:
    try:
        packet = parse_connect(body)
    except ProtocolError:
        return
    assert isinstance(packet.client_id, str)


def test_property_bag_and_merge_patch() -> None:
    assert parse_property_bag("%24.ct=application%2Fjson&%24.ce=utf-8&k%20x=v%26w&flag") == {
        "$.ct": "application/json",
        "$.ce": "utf-8",
        "k x": "v&w",
        "flag": "",
    }
    document: dict[str, Any] = {"a": 1, "b": {"c": 2, "d": 3}}
    merge_patch(document, {"a": None, "b": {"c": None, "e": [1]}, "$version": 9, "f": "g"})
    assert document == {"b": {"d": 3, "e": [1]}, "f": "g"}


def test_reported_patch_that_is_not_an_object_is_refused(
    iothub: Hub, hub_certs: Certificates, clients: list[Any]
) -> None:
    client, _ = connected_module(clients, iothub, hub_certs)
    before = iothub.reported
    with pytest.raises(azure_exceptions.ClientError) as caught:
        call(lambda: client.patch_twin_reported_properties([1, 2]))
    assert "400" in str(caught.value) or "400" in str(caught.value.__cause__)
    assert iothub.reported == before
    assert len(iothub.unexpected) == 1 and "JSON object" in iothub.unexpected[0]
    # The hub goes on serving the same client.
    call(lambda: client.patch_twin_reported_properties({"ok": 1}))
    assert iothub.reported == {"ok": 1, "$version": before["$version"] + 1}
