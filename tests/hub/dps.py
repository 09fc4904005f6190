"""The Device Provisioning Service of the stand-in, behind the hub's TLS gate (gate.py).

The gate hands it every CONNECT whose username is a DPS one
(`{idScope}/registrations/{registrationId}/api-version=...`); it checks the credentials as DPS
does and then speaks MQTT 3.1.1 itself on that connection (DPS's answers go to the connection
that asked, not through mosquitto). The protocol, as azure-iot-device 2.14.0 speaks it
(provisioning/pipeline/):

- the client subscribes to `$dps/registrations/res/#`;
- it publishes `$dps/registrations/PUT/iotdps-register/?$rid=R` with {"registrationId": ...};
  DPS answers `$dps/registrations/res/202/?$rid=R&retry-after=S` with
  {"operationId": O, "status": "assigning"};
- after S seconds it publishes `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=R2&operationId=O`;
  DPS answers `$dps/registrations/res/200/?$rid=R2` with {"operationId": O, "status":
  "assigned", "registrationState": {"registrationId", "assignedHub", "deviceId", "status",
  "substatus", "createdDateTimeUtc", "lastUpdatedDateTimeUtc", "etag"}}.

Credentials:
- symmetric key: the password is a SAS token for `{idScope}/registrations/{registrationId}`
  (an optional `skn=registration`), signed with the enrollment's key; for an enrollment group
  the key is base64(HMAC-SHA256(base64decode(group key), registration id)), derived here
  independently of the agent;
- X.509: the gate's handshake verified the client certificate against the test CA; its subject
  CN must be the registration id of an X.509 enrollment.
Refusals are CONNACK 5 (not authorized), 4 (bad username), 3 while `down` is set.

An assignment registers the device at the hub (the device id is the registration id), with
the device key or as an X.509 identity, and answers the hub's `assigned_hub` name, which the
gate accepts as an alias of the hub's host name (its certificate covers it).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .gate import (
    CONNACK_ACCEPTED,
    CONNACK_BAD_USERNAME_OR_PASSWORD,
    CONNACK_NOT_AUTHORIZED,
    CONNACK_SERVER_UNAVAILABLE,
    ConnectPacket,
    ProtocolError,
    _read_field,
    _subject_cn,
    check_sas,
)

if TYPE_CHECKING:
    from .hub import Hub

DEFAULT_ID_SCOPE = "0ne00000D05"
MAX_PACKET_BYTES = 64 * 1024
IDLE_TIMEOUT = 60.0


def group_device_key(group_key: str, registration_id: str) -> str:
    digest = hmac.new(base64.b64decode(group_key), registration_id.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class Registration:
    """One assignment DPS made."""

    registration_id: str
    device_id: str
    assigned_hub: str
    auth: str  # "symmetric", "group" or "x509"
    at: float


class Dps:
    """DPS for one Hub: enrollments (individual symmetric or X.509, groups), the gate's hook
    (claims, authenticate, serve) and what tests look at (registrations, down)."""

    def __init__(self, hub: Hub, id_scope: str = DEFAULT_ID_SCOPE, assigned_hub: str = "localhost",
                 retry_after: int = 1) -> None:
        self.hub = hub
        self.id_scope = id_scope
        self.assigned_hub = assigned_hub
        self.retry_after = retry_after
        self.down = False  # CONNACK 3 (server unavailable) to every CONNECT
        self._lock = threading.Lock()
        self._individual: dict[str, str] = {}  # registration id -> key
        self._x509: set[str] = set()  # registration ids
        self._groups: dict[str, str] = {}  # group name -> key
        self._operations: dict[str, tuple[str, str]] = {}  # operation id -> (registration, auth)
        self._registrations: list[Registration] = []
        self.connects = 0

    # --- enrollments and what tests read -------------------------------------------------

    def attach(self) -> None:
        self.hub.gate.dps = self
        self.hub.gate.aliases = (self.assigned_hub,)

    def detach(self) -> None:
        self.hub.gate.dps = None
        self.hub.gate.aliases = ()

    def individual(self, registration_id: str, key: str | None = None) -> str:
        key = key or base64.b64encode(hashlib.sha256(f"dps:{registration_id}".encode()).digest()).decode()
        with self._lock:
            self._individual[registration_id] = key
        return key

    def group(self, name: str, key: str | None = None) -> str:
        key = key or base64.b64encode(hashlib.sha256(f"group:{name}".encode()).digest()).decode()
        with self._lock:
            self._groups[name] = key
        return key

    def x509(self, registration_id: str) -> None:
        with self._lock:
            self._x509.add(registration_id)

    @property
    def registrations(self) -> list[Registration]:
        with self._lock:
            return list(self._registrations)

    # --- the gate's hook ------------------------------------------------------------------

    def claims(self, packet: ConnectPacket) -> bool:
        return packet.username is not None and "/registrations/" in packet.username

    def authenticate(self, packet: ConnectPacket, peercert: Mapping[str, Any] | None
                     ) -> tuple[int, str]:
        """(CONNACK code, reason); the registration's auth kind is kept for serve()."""
        with self._lock:
            self.connects += 1
        if self.down:
            return CONNACK_SERVER_UNAVAILABLE, "DPS is down"
        expected = f"{self.id_scope}/registrations/{packet.client_id}/"
        if packet.username is None or not packet.username.startswith(expected):
            return CONNACK_BAD_USERNAME_OR_PASSWORD, (
                f"username {packet.username!r} does not start with {expected!r}")
        if "api-version=" not in packet.username:
            return CONNACK_BAD_USERNAME_OR_PASSWORD, "username lacks api-version"
        registration_id = packet.client_id
        if peercert:
            cn = _subject_cn(peercert)
            with self._lock:
                enrolled = registration_id in self._x509
            if not enrolled:
                return CONNACK_NOT_AUTHORIZED, f"no X.509 enrollment for {registration_id!r}"
            if cn != registration_id:
                return CONNACK_NOT_AUTHORIZED, f"certificate CN {cn!r} is not {registration_id!r}"
            return CONNACK_ACCEPTED, "x509"
        if packet.password is None:
            return CONNACK_NOT_AUTHORIZED, "neither a client certificate nor a SAS token"
        try:
            token = packet.password.decode()
        except UnicodeDecodeError:
            return CONNACK_NOT_AUTHORIZED, "password is not UTF-8"
        resource = f"{self.id_scope}/registrations/{registration_id}"
        with self._lock:
            keys = []
            if registration_id in self._individual:
                keys.append(("symmetric", self._individual[registration_id]))
            keys += [("group", group_device_key(k, registration_id)) for k in self._groups.values()]
        if not keys:
            return CONNACK_NOT_AUTHORIZED, f"no enrollment for {registration_id!r}"
        problem = ""
        for auth, key in keys:
            problem = check_sas(token, resource, key, time.time()) or ""
            if not problem:
                return CONNACK_ACCEPTED, auth
        return CONNACK_NOT_AUTHORIZED, problem

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    packet: ConnectPacket, auth: str) -> None:
        """MQTT on an accepted DPS connection until the client leaves."""
        writer.write(bytes([0x20, 0x02, 0x00, CONNACK_ACCEPTED]))
        await writer.drain()
        while True:
            try:
                kind, flags, body = await asyncio.wait_for(_read_packet(reader), IDLE_TIMEOUT)
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError,
                    ProtocolError):
                return
            if kind == 8:  # SUBSCRIBE: grant QoS 1 to each filter
                count = 0
                offset = 2
                while offset < len(body):
                    _, offset = _read_field(body, offset)
                    offset += 1
                    count += 1
                writer.write(bytes([0x90, 2 + count]) + body[:2] + bytes([1]) * count)
            elif kind == 10:  # UNSUBSCRIBE
                writer.write(bytes([0xB0, 0x02]) + body[:2])
            elif kind == 12:  # PINGREQ
                writer.write(bytes([0xD0, 0x00]))
            elif kind == 14:  # DISCONNECT
                return
            elif kind == 3:
                topic_raw, offset = _read_field(body, 0)
                if (flags >> 1) & 3:
                    writer.write(bytes([0x40, 0x02]) + body[offset:offset + 2])  # PUBACK
                    offset += 2
                answer = self._answer(topic_raw.decode("utf-8", "replace"), body[offset:],
                                      packet.client_id, auth)
                if answer is not None:
                    writer.write(_publish(*answer))
            await writer.drain()

    # --- the service ----------------------------------------------------------------------

    def _answer(self, topic: str, payload: bytes, registration_id: str, auth: str
                ) -> tuple[str, bytes] | None:
        path, _, query = topic.partition("?")
        params = dict(urllib.parse.parse_qsl(query))
        rid = params.get("$rid", "")
        if path == "$dps/registrations/PUT/iotdps-register/":
            try:
                body = json.loads(payload or b"{}")
            except ValueError:
                body = None
            if not isinstance(body, dict) or body.get("registrationId") != registration_id:
                return _response(400, rid, {"message": "registrationId does not match"})
            operation = str(uuid.uuid4())
            with self._lock:
                self._operations[operation] = (registration_id, auth)
            return _response(202, rid, {"operationId": operation, "status": "assigning"},
                             retry_after=self.retry_after)
        if path == "$dps/registrations/GET/iotdps-get-operationstatus/":
            operation = params.get("operationId", "")
            with self._lock:
                known = self._operations.pop(operation, None)
            if known is None or known[0] != registration_id:
                return _response(404, rid, {"message": f"no operation {operation}"})
            return _response(200, rid, self._assign(registration_id, auth, operation))
        return None

    def _assign(self, registration_id: str, auth: str, operation: str) -> dict[str, Any]:
        device_id = registration_id
        if auth == "x509":
            self.hub.x509_identity(device_id)
        else:
            with self._lock:
                key = (self._individual[registration_id] if auth == "symmetric" else
                       next(group_device_key(k, registration_id) for k in self._groups.values()))
            self.hub.identity(device_id, key=key)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        with self._lock:
            self._registrations.append(
                Registration(registration_id, device_id, self.assigned_hub, auth, time.time()))
        return {"operationId": operation, "status": "assigned", "registrationState": {
            "registrationId": registration_id, "assignedHub": self.assigned_hub,
            "deviceId": device_id, "status": "assigned", "substatus": "initialAssignment",
            "createdDateTimeUtc": now, "lastUpdatedDateTimeUtc": now, "etag": "\"1\""}}


def _response(status: int, rid: str, body: dict[str, Any], retry_after: int | None = None
              ) -> tuple[str, bytes]:
    topic = f"$dps/registrations/res/{status}/?$rid={urllib.parse.quote(rid, safe='')}"
    if retry_after is not None:
        topic += f"&retry-after={retry_after}"
    return topic, json.dumps(body).encode()


def _publish(topic: str, payload: bytes) -> bytes:
    """A QoS 0 PUBLISH (DPS's answers need no acknowledgement in this stand-in)."""
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + payload
    return bytes([0x30]) + _remaining_length(len(body)) + body


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    first = (await reader.readexactly(1))[0]
    length = 0
    for shift_index in range(4):
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << (7 * shift_index)
        if not byte & 0x80:
            break
    else:
        raise ProtocolError("remaining length longer than 4 bytes")
    if length > MAX_PACKET_BYTES:
        raise ProtocolError(f"a packet of {length} bytes")
    return first >> 4, first & 0x0F, await reader.readexactly(length)
