"""The IoT Hub stand-in: mosquitto (broker.py) + the TLS front door (gate.py) + the hub side,
a paho client with its own persistent session that answers twin requests, pushes desired
patches and records telemetry.

Topics (checked against azure-iot-device 2.14.0, iothub/pipeline/mqtt_topic_iothub.py):
- twin GET: the device publishes `$iothub/twin/GET/?$rid=R`; the hub answers
  `$iothub/twin/res/200/?$rid=R` with {"desired": {...,"$version": D}, "reported": {...,"$version": P}};
- reported patch: `$iothub/twin/PATCH/properties/reported/?$rid=R` with a JSON patch; the hub
  merges it (null deletes a key), bumps P and answers `$iothub/twin/res/204/?$rid=R&$version=P`;
- desired patch: the hub publishes `$iothub/twin/PATCH/properties/desired/?$version=D` with
  the patch and "$version": D;
- telemetry: `devices/{device}/modules/{module}/messages/events/{property bag}` (module) or
  `devices/{device}/messages/events/{property bag}` (device).
Twin topics carry no identity: one broker serves one identity's twin at a time (a second
identity at the same time needs a second Hub, e.g. on 127.0.0.2).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt  # type: ignore[import-untyped]

from .broker import BrokerError, Certificates, CertPair, Mosquitto, port_is_free
from .gate import Credential, Gate, Publish, make_sas_token

IOTHUB_PORT = 8883  # the SDK always connects here
DEFAULT_HOSTNAME = "test-hub.azure-devices.net"
HUB_CLIENT_ID = "iot-micro-agent-test-hub"

_TELEMETRY = re.compile(r"^devices/([^/]+)/(?:modules/([^/]+)/)?messages/events/(.*)$")
_RID = re.compile(r"[?&]\$rid=([^&]*)")

# Short names the SDK uses in the property bag for system properties.
SYSTEM_PROPERTIES = {
    "$.mid": "message_id",
    "$.cid": "correlation_id",
    "$.uid": "user_id",
    "$.ct": "content_type",
    "$.ce": "content_encoding",
    "$.ifid": "iothub_interface_id",
    "$.on": "output_name",
    "$.exp": "expiry_time_utc",
}


class HubError(AssertionError):
    """A wait ran out, or the hub saw something a test did not expect."""


@dataclass(frozen=True)
class Identity:
    """A device or module identity registered with the hub (SAS key and/or X.509)."""

    hostname: str
    gateway: str
    device_id: str
    module_id: str | None
    key: str | None
    x509: CertPair | None

    @property
    def client_id(self) -> str:
        return self.device_id if self.module_id is None else f"{self.device_id}/{self.module_id}"

    @property
    def resource_uri(self) -> str:
        uri = f"{self.hostname}/devices/{self.device_id}"
        return uri if self.module_id is None else f"{uri}/modules/{self.module_id}"

    def connection_string(self, key: str | None = None, gateway: str | None = None) -> str:
        """A connection string for this identity through the stand-in: HostName stays a normal
        hub name, GatewayHostName redirects the SDK to the gate. `key` overrides the key (a
        wrong key for refusal tests); `gateway` the address."""
        key = key if key is not None else self.key
        if key is None:
            raise HubError(f"{self.client_id} has no SAS key (an X.509 identity)")
        parts = [f"HostName={self.hostname}", f"DeviceId={self.device_id}"]
        if self.module_id is not None:
            parts.append(f"ModuleId={self.module_id}")
        parts += [f"SharedAccessKey={key}", f"GatewayHostName={gateway or self.gateway}"]
        return ";".join(parts)

    def sas_token(self, ttl: int = 3600) -> str:
        if self.key is None:
            raise HubError(f"{self.client_id} has no SAS key")
        return make_sas_token(self.key, self.resource_uri, ttl)


@dataclass(frozen=True)
class Telemetry:
    """One device-to-cloud message as the hub received it."""

    topic: str
    device_id: str
    module_id: str | None
    payload: bytes
    properties: dict[str, str]  # the whole property bag, url-decoded, keys as sent ("$.ct")
    system: dict[str, str]  # system properties by SDK name: content_type, message_id, ...
    custom: dict[str, str]  # the custom properties
    arrived: float  # time.time() at arrival
    retained: bool = False
    # mosquitto delivered this message to the hub client again (MQTT DUP): the hub client had
    # it, but its PUBACK did not reach mosquitto before the hub side went away (stop(),
    # kill()). A stand-in artifact: not a message the device sent again (gate.publishes()).
    redelivered: bool = False

    @property
    def content_type(self) -> str | None:
        return self.system.get("content_type")

    @property
    def content_encoding(self) -> str | None:
        return self.system.get("content_encoding")

    @property
    def message_id(self) -> str | None:
        return self.system.get("message_id")


def parse_property_bag(bag: str) -> dict[str, str]:
    """`$.ct=application%2Fjson&k=v` -> {"$.ct": "application/json", "k": "v"}; a key without
    '=' maps to ""."""
    properties: dict[str, str] = {}
    if not bag:
        return properties
    for part in bag.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        properties[urllib.parse.unquote(name)] = urllib.parse.unquote(value)
    return properties


def merge_patch(document: dict[str, Any], patch: dict[str, Any]) -> None:
    """IoT Hub twin patch semantics: objects merge recursively, null deletes, "$..." keys of
    the patch (e.g. a client-sent $version) are ignored."""
    for name, value in patch.items():
        if name.startswith("$"):
            continue
        if value is None:
            document.pop(name, None)
        elif isinstance(value, dict) and isinstance(document.get(name), dict):
            merge_patch(document[name], value)
        else:
            document[name] = copy.deepcopy(value)


@dataclass
class _State:
    desired: dict[str, Any] = field(default_factory=dict)
    desired_version: int = 1
    reported: dict[str, Any] = field(default_factory=dict)
    reported_version: int = 1
    telemetry: list[Telemetry] = field(default_factory=list)
    twin_requests: int = 0
    reported_patches: list[dict[str, Any]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


class Hub:
    """A local IoT Hub for one address (127.0.0.1 by default, 127.0.0.2 for a second
    identity): the gate on address:8883, mosquitto on a free plain loopback port, and the hub
    client. Use as a context manager, or start() / close().

    Test-facing API: identity(...) / x509_identity(...), set_desired(patch), reported,
    twin(), wait_for_telemetry(n, timeout), wait_for_reported(predicate, timeout), reset(),
    and the outage controls stop() / kill() / restart() / start().
    """

    def __init__(
        self,
        certs: Certificates,
        host: str = "127.0.0.1",
        gateway: str | None = None,
        hostname: str = DEFAULT_HOSTNAME,
        workdir: Path | None = None,
        port: int = IOTHUB_PORT,
    ) -> None:
        self.certs = certs
        self.host = host
        self.port = port
        # The name devices put in GatewayHostName; the server certificate covers each.
        self.gateway = gateway or ("localhost" if host == "127.0.0.1" else host)
        self.hostname = hostname
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix=f"hub-{host}-")) if workdir is None else workdir
        self._lock = threading.Condition()
        self._state = _State()
        self._identities: dict[str, Identity] = {}
        self.broker = Mosquitto(self.dir / "mosquitto", host="127.0.0.1")
        self.gate = Gate(
            host=host,
            port=port,
            certfile=certs.server.cert,
            keyfile=certs.server.key,
            cafile=certs.ca.cert,
            hostname=hostname,
            upstream_host=self.broker.host,
            upstream_port=self.broker.port,
            credentials=self._credentials,
        )
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Hub:  # noqa: PYI034 (typing.Self needs Python 3.11)
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart after stop()/kill()) mosquitto, the hub client and the gate, on
        the same ports; returns when all three are ready. mosquitto comes back with its saved
        sessions, so devices resume where they were."""
        if not self.gate.listening and not port_is_free(self.host, self.port):
            raise BrokerError(
                f"{self.host}:{self.port} is in use: another IoT Hub stand-in or broker "
                "(a Debian mosquitto service?) listens there"
            )
        self.broker.start(timeout)
        if self._client is None:
            self._client = self._make_client()
            self._client.connect_async(self.broker.host, self.broker.port, keepalive=30)
            self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise BrokerError(
                f"the hub client did not subscribe within {timeout} s\n{self.broker.log_tail()}"
            )
        self.gate.start()

    def listen_websockets(self, port: int = 443) -> None:
        """Also serve MQTT over WebSockets on address:port (the SDK's websockets=True always
        connects to 443: binding it needs root), same TLS and checks; kept for the session."""
        self.gate.listen_websockets(port)

    def stop(self) -> None:
        """An orderly outage: the gate closes every device connection (TLS close_notify,
        FIN) and refuses new ones; mosquitto stops (SIGTERM), writing its database."""
        self.gate.stop(abort=False)
        self._mark_down()
        self.broker.stop()

    def kill(self) -> None:
        """An abrupt outage: every device connection is reset mid-stream (TCP RST, no TLS or
        MQTT goodbye) and new ones are refused; then mosquitto ends.

        mosquitto ends with SIGTERM, not SIGKILL, because IoT Hub never forgets a session or a
        message it acknowledged, and a SIGKILLed mosquitto does: it saves after acknowledging,
        so the last subscription or PUBACKed message before a SIGKILL can be lost (found by
        trying). Devices cannot tell the difference: they only ever talk to the gate."""
        self.gate.stop(abort=True)
        self._mark_down()
        self.broker.stop()

    def restart(self, kill: bool = True, downtime: float = 0.0) -> None:
        """kill() (or stop()), wait `downtime` seconds, start()."""
        if kill:
            self.kill()
        else:
            self.stop()
        if downtime > 0:
            time.sleep(downtime)
        self.start()

    def hold_replies(self) -> None:
        """Devices' connections stay up, but nothing reaches the devices (no PUBACK) until
        the next kill() or stop(): what they publish from now on stays in flight."""
        self.gate.hold_replies()

    def held_pubacks(self) -> int:
        """The PUBACKs held back from devices since hold_replies()."""
        return self.gate.held_pubacks()

    def pause_hub_client(self) -> None:
        """Disconnect the hub side only; its persistent session stays in mosquitto, which
        queues what devices publish until start() connects the hub client again."""
        client, self._client = self._client, None
        self._mark_down()
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def close(self) -> None:
        self.gate.close()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self.broker.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def device_publishes(self) -> list[Publish]:
        """Every PUBLISH devices sent through the gate since the last reset, in order, with the
        gate connection it came on (gate.Publish)."""
        return self.gate.publishes()

    def _mark_down(self) -> None:
        self._connected.clear()
        self._subscribed.clear()

    @property
    def running(self) -> bool:
        return self.broker.running and self.gate.listening

    # --- identities ---------------------------------------------------------------------

    def identity(
        self, device_id: str, module_id: str | None = None, key: str | None = None
    ) -> Identity:
        """Register (or return) a SAS identity. The key defaults to one derived from the ids,
        so the same identity has the same key in every session."""
        client_id = device_id if module_id is None else f"{device_id}/{module_id}"
        with self._lock:
            known = self._identities.get(client_id)
            if known is not None and known.key is not None and key in (None, known.key):
                return known
            if key is None:
                key = base64.b64encode(
                    hashlib.sha256(f"sas:{client_id}".encode()).digest()
                ).decode()
            identity = Identity(
                self.hostname,
                self.gateway,
                device_id,
                module_id,
                key,
                known.x509 if known is not None else None,
            )
            self._identities[client_id] = identity
            return identity

    def x509_identity(self, device_id: str, module_id: str | None = None) -> Identity:
        """Register (or return) an X.509 identity with a client certificate signed by the test
        CA, subject CN = device id (IoT Hub's CA-signed rule)."""
        client_id = device_id if module_id is None else f"{device_id}/{module_id}"
        with self._lock:
            known = self._identities.get(client_id)
            if known is not None and known.x509 is not None:
                return known
            identity = Identity(
                self.hostname,
                self.gateway,
                device_id,
                module_id,
                known.key if known is not None else None,
                self.certs.client(device_id),
            )
            self._identities[client_id] = identity
            return identity

    def _credentials(self) -> dict[str, Credential]:
        with self._lock:
            return {
                client_id: Credential(i.device_id, i.module_id, i.key, i.x509 is not None)
                for client_id, i in self._identities.items()
            }

    # --- twin and telemetry, for tests --------------------------------------------------

    def set_desired(self, patch: dict[str, Any], timeout: float = 5.0) -> int:
        """Merge `patch` into the desired properties, bump their $version and push the patch
        (with "$version") to the device. Returns the new version. Waits until the hub client
        is connected; the publish is QoS 1 into its persistent session, so it reaches a device
        that is offline now once it reconnects (a real hub does not queue patches: a device
        then catches up through get_twin)."""
        if not self._connected.wait(timeout):
            raise HubError(
                f"the hub client is not connected (broker running: {self.broker.running})"
            )
        with self._lock:
            merge_patch(self._state.desired, patch)
            self._state.desired_version += 1
            version = self._state.desired_version
            body = dict(copy.deepcopy(patch), **{"$version": version})
        assert self._client is not None
        self._client.publish(
            f"$iothub/twin/PATCH/properties/desired/?$version={version}", json.dumps(body), qos=1
        )
        return version

    def set_twin(self, desired: dict[str, Any], reported: dict[str, Any] | None = None) -> None:
        """Replace the twin without telling the device (as if it was edited while nothing was
        connected); versions go up by one."""
        with self._lock:
            self._state.desired = copy.deepcopy(desired)
            self._state.desired_version += 1
            if reported is not None:
                self._state.reported = copy.deepcopy(reported)
                self._state.reported_version += 1

    def twin(self) -> dict[str, Any]:
        """The twin as a GET returns it."""
        with self._lock:
            return self._twin_locked()

    @property
    def desired(self) -> dict[str, Any]:
        """The desired properties with "$version"."""
        return self.twin()["desired"]  # type: ignore[no-any-return]

    @property
    def reported(self) -> dict[str, Any]:
        """The reported properties with "$version"."""
        return self.twin()["reported"]  # type: ignore[no-any-return]

    @property
    def reported_patches(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._state.reported_patches)

    @property
    def twin_requests(self) -> int:
        with self._lock:
            return self._state.twin_requests

    @property
    def telemetry(self) -> list[Telemetry]:
        with self._lock:
            return list(self._state.telemetry)

    @property
    def unexpected(self) -> list[str]:
        """Messages on topics the hub does not serve (a test may assert this is empty)."""
        with self._lock:
            return list(self._state.unexpected)

    def wait_for_telemetry(self, n: int, timeout: float = 5.0) -> list[Telemetry]:
        """Wait until at least n messages arrived since the last reset(); returns all of them
        in arrival order. Raises HubError on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._state.telemetry) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HubError(
                        f"{len(self._state.telemetry)} of {n} messages within {timeout} s"
                        f"\ngate: {self.gate.decisions()[-5:]}\nbroker log:\n{self.broker.log_tail(15)}"
                    )
                self._lock.wait(left)
            return list(self._state.telemetry)

    def wait_for_reported(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Wait until predicate(reported document) is true; returns that document."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                reported = self._twin_locked()["reported"]
                if predicate(reported):
                    return reported  # type: ignore[no-any-return]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HubError(
                        f"reported properties never matched within {timeout} s: {reported}"
                    )
                self._lock.wait(left)

    def reset(self, sessions: bool = False) -> None:
        """Forget telemetry, requests and the twin (versions restart at 1); identities and
        the broker stay. sessions=True also ends every registered identity's persistent
        session in mosquitto (its subscriptions and queued messages), so the next test's
        client starts clean; a device connected at that moment is disconnected."""
        with self._lock:
            self._state = _State()
            client_ids = sorted(self._identities)
        self.gate.forget_publishes()
        if sessions:
            for client_id in client_ids:
                self._end_session(client_id)

    def _end_session(self, client_id: str, timeout: float = 5.0) -> None:
        # MQTT 3.1.1: a CONNECT with clean session set discards the stored session of that
        # client id; a DISCONNECT right after leaves nothing behind.
        done = threading.Event()
        client = mqtt.Client(client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
        client.on_connect = lambda c, u, f, rc: done.set()
        client.connect(self.broker.host, self.broker.port, keepalive=10)
        client.loop_start()
        try:
            if not done.wait(timeout):
                raise HubError(f"could not end the session of {client_id}")
        finally:
            client.disconnect()
            client.loop_stop()

    def _twin_locked(self) -> dict[str, Any]:
        state = self._state
        return {
            "desired": dict(copy.deepcopy(state.desired), **{"$version": state.desired_version}),
            "reported": dict(copy.deepcopy(state.reported), **{"$version": state.reported_version}),
        }

    # --- the hub client -----------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        # A persistent session with a fixed id: whatever devices publish while the hub client
        # is reconnecting is queued for it by mosquitto (and saved across broker restarts).
        client = mqtt.Client(
            client_id=f"{HUB_CLIENT_ID}-{self.host}", clean_session=False, protocol=mqtt.MQTTv311
        )
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(1000)
        client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: dict[str, Any], rc: int
    ) -> None:
        if rc != 0:
            return
        # Without this a twin round trip takes about 45 ms instead of 2 (Nagle against
        # delayed ACK on the hub's replies); paho 1.x does not set it.
        sock = client.socket()
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connected.set()
        # `#` does not match `$` topics: the twin topics are subscribed explicitly. Subscribing
        # again on each connect is harmless and covers a broker that lost its database.
        client.subscribe(
            [
                ("$iothub/twin/GET/#", 1),
                ("$iothub/twin/PATCH/properties/reported/#", 1),
                ("devices/+/messages/events/#", 1),
                ("devices/+/modules/+/messages/events/#", 1),
            ]
        )

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, granted_qos: Any) -> None:
        self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, rc: int) -> None:
        self._mark_down()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        if topic.startswith("$iothub/twin/GET/"):
            self._answer_get(client, topic)
        elif topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            self._answer_reported(client, topic, message.payload)
        else:
            match = _TELEMETRY.match(topic)
            if match is None:
                with self._lock:
                    self._state.unexpected.append(topic)
                    self._lock.notify_all()
                return
            self._record_telemetry(
                match, topic, bytes(message.payload), bool(message.retain), bool(message.dup)
            )

    def _answer_get(self, client: mqtt.Client, topic: str) -> None:
        rid = _request_id(topic)
        with self._lock:
            self._state.twin_requests += 1
            body = json.dumps(self._twin_locked())
            self._lock.notify_all()
        client.publish(f"$iothub/twin/res/200/?$rid={rid}", body, qos=1)

    def _answer_reported(self, client: mqtt.Client, topic: str, payload: bytes) -> None:
        rid = _request_id(topic)
        try:
            patch = json.loads(payload)
            problem = None if isinstance(patch, dict) else "a reported patch is a JSON object"
        except ValueError as error:
            problem = str(error)
        if problem is not None:
            with self._lock:
                self._state.unexpected.append(f"{topic}: {problem}")
                self._lock.notify_all()
            client.publish(
                f"$iothub/twin/res/400/?$rid={rid}", json.dumps({"message": problem}), qos=1
            )
            return
        with self._lock:
            merge_patch(self._state.reported, patch)
            self._state.reported_version += 1
            self._state.reported_patches.append(patch)
            version = self._state.reported_version
            self._lock.notify_all()
        client.publish(f"$iothub/twin/res/204/?$rid={rid}&$version={version}", b"", qos=1)

    def _record_telemetry(
        self, match: re.Match[str], topic: str, payload: bytes, retained: bool, redelivered: bool
    ) -> None:
        properties = parse_property_bag(match.group(3))
        system = {SYSTEM_PROPERTIES[k]: v for k, v in properties.items() if k in SYSTEM_PROPERTIES}
        custom = {k: v for k, v in properties.items() if k not in SYSTEM_PROPERTIES}
        record = Telemetry(
            topic=topic,
            device_id=urllib.parse.unquote(match.group(1)),
            module_id=None if match.group(2) is None else urllib.parse.unquote(match.group(2)),
            payload=payload,
            properties=properties,
            system=system,
            custom=custom,
            arrived=time.time(),
            retained=retained,
            redelivered=redelivered,
        )
        with self._lock:
            self._state.telemetry.append(record)
            self._lock.notify_all()


def _request_id(topic: str) -> str:
    match = _RID.search(topic)
    return "" if match is None else urllib.parse.unquote(match.group(1))
