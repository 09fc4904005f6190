"""The TLS front door of the stand-in: what a device reaches at <address>:8883.

Why not mosquitto's own TLS listener: mosquitto 2.0.11 (Debian bookworm) can only compare a
password with a fixed one (password_file, or the dynamic-security plugin's per-client
password). An IoT Hub SAS token is "SharedAccessSignature sr=<uri>&sig=<HMAC>&se=<expiry>"
and its expiry is part of what is signed, so each token the SDK makes is new and no fixed
password can match it. A real check needs code at CONNECT time: a C auth plugin (built at
test time against mosquitto-dev and libssl-dev) or this: a small asyncio TLS server that reads
the MQTT CONNECT packet, checks the credentials the way IoT Hub does, answers a refused
CONNACK when they are wrong, and otherwise forwards the CONNECT and every later byte to
mosquitto's plain loopback port. mosquitto still does all of MQTT (sessions, persistence,
QoS, retries); the gate only authenticates.

Checks (IoT Hub's rules, as the SDK 2.14.0 sends them):
- client id is "{device}" or "{device}/{module}" of a registered identity, else CONNACK 2;
- username is "{hostname}/{client id}/?api-version=..." else CONNACK 4;
- SAS: the password is a token whose sr is "{hostname}/devices/{device}[/modules/{module}]",
  whose se is in the future and whose sig is base64(HMAC-SHA256(key, quote(sr) + "\\n" + se))
  with the identity's key, else CONNACK 5;
- X.509: the TLS handshake verifies the client certificate against the test CA (an untrusted
  certificate fails the handshake); the certificate's subject CN must be the device id of an
  identity registered for X.509, else CONNACK 5.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import websocket

# MQTT 3.1.1 CONNACK return codes.
CONNACK_ACCEPTED = 0
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_SERVER_UNAVAILABLE = 3
CONNACK_BAD_USERNAME_OR_PASSWORD = 4
CONNACK_NOT_AUTHORIZED = 5

# Bounds on what the gate reads before it has authenticated anyone.
MAX_CONNECT_BYTES = 64 * 1024
HANDSHAKE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
PUMP_CHUNK = 64 * 1024
HOLD_POLL_S = 0.01  # how often a held pump looks whether it may go on


@dataclass(frozen=True)
class Credential:
    """What the gate knows about one identity: its SAS key (base64) and/or that it may use an
    X.509 certificate whose CN is the device id."""

    device_id: str
    module_id: str | None
    key: str | None
    x509: bool

    @property
    def client_id(self) -> str:
        return self.device_id if self.module_id is None else f"{self.device_id}/{self.module_id}"


@dataclass(frozen=True)
class ConnectPacket:
    """The fields of an MQTT CONNECT the gate checks."""

    protocol: str
    level: int
    client_id: str
    username: str | None
    password: bytes | None


@dataclass(frozen=True)
class Publish:
    """One PUBLISH a device sent through the gate: on which of its connections (numbered from
    1 in the order the gate accepted them), the topic (with the property bag), the DUP flag
    (the device's MQTT client sending it again after a reconnect) and the packet id."""

    connection: int
    client_id: str
    topic: str
    dup: bool
    packet_id: int | None


@dataclass
class GateLog:
    """Every decision of the gate, in order: (client id or peer, accepted, reason); and every
    PUBLISH devices sent, in order."""

    decisions: list[tuple[str, bool, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    publishes: list[Publish] = field(default_factory=list)
    client_certs: list[tuple[str, str]] = field(default_factory=list)  # (client id, serial)


class PacketSplitter:
    """Splits one direction of a connection's byte stream into MQTT packets and gives each
    whole packet to `packet(first byte, body)`. A packet is kept only until it is whole; the
    gate's stream is bounded by the hub's message size."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while True:
            try:
                length, offset = _read_remaining_length(bytes(self._buffer[:5]), 1)
            except ProtocolError:
                return  # the header is not whole yet (or not MQTT: mosquitto will say so)
            end = offset + length
            if len(self._buffer) < end:
                return
            packet = bytes(self._buffer[:end])
            del self._buffer[:end]
            self.packet(packet[0], packet[offset:])

    def packet(self, first: int, body: bytes) -> None:
        raise NotImplementedError


class PublishCounter(PacketSplitter):
    """Records each PUBLISH of the device-to-broker stream of one connection (the rest of the
    stream is forwarded unread)."""

    def __init__(self, connection: int, client_id: str, record: Callable[[Publish], None]) -> None:
        super().__init__()
        self.connection = connection
        self.client_id = client_id
        self._record = record

    def packet(self, first: int, body: bytes) -> None:
        if first >> 4 != 3:
            return
        try:
            topic, offset = _read_field(body, 0)
        except ProtocolError:
            return
        qos = (first >> 1) & 3
        packet_id = int.from_bytes(body[offset : offset + 2], "big") if qos else None
        self._record(Publish(self.connection, self.client_id,
                             topic.decode("utf-8", "replace"), bool(first & 0x08), packet_id))


class HeldReplies(PacketSplitter):
    """Counts the PUBACKs among the broker-to-device bytes the gate holds (hold_replies). It
    reads the whole stream, to know where packets begin; `holding` says whether what it is
    fed now is held."""

    def __init__(self, count: Callable[[], None]) -> None:
        super().__init__()
        self._count = count
        self.holding = False

    def packet(self, first: int, body: bytes) -> None:
        if self.holding and first >> 4 == 4:
            self._count()


class ProtocolError(ValueError):
    """Bytes that are not a well-formed MQTT CONNECT."""


def _read_remaining_length(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    for shift_index in range(4):
        if offset >= len(data):
            raise ProtocolError("truncated remaining length")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << (7 * shift_index)
        if not byte & 0x80:
            return value, offset
    raise ProtocolError("remaining length longer than 4 bytes")


def _read_field(body: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 2 > len(body):
        raise ProtocolError("truncated length prefix")
    size = int.from_bytes(body[offset : offset + 2], "big")
    end = offset + 2 + size
    if end > len(body):
        raise ProtocolError("truncated field")
    return body[offset + 2 : end], end


def parse_connect(body: bytes) -> ConnectPacket:
    """The variable header and payload of a CONNECT (after its fixed header)."""
    name, offset = _read_field(body, 0)
    if offset + 4 > len(body):
        raise ProtocolError("truncated CONNECT header")
    level = body[offset]
    flags = body[offset + 1]
    offset += 4  # level, flags, keep alive
    client_id, offset = _read_field(body, offset)
    if flags & 0x04:  # will flag: topic and message precede the credentials
        _, offset = _read_field(body, offset)
        _, offset = _read_field(body, offset)
    username: bytes | None = None
    password: bytes | None = None
    if flags & 0x80:
        username, offset = _read_field(body, offset)
    if flags & 0x40:
        password, offset = _read_field(body, offset)
    try:
        return ConnectPacket(
            protocol=name.decode(),
            level=level,
            client_id=client_id.decode(),
            username=None if username is None else username.decode(),
            password=password,
        )
    except UnicodeDecodeError as error:
        raise ProtocolError(f"CONNECT string not UTF-8: {error}") from error


def sas_signature(key: str, resource_uri: str, expiry: int) -> str:
    """base64(HMAC-SHA256(base64decode(key), quote(uri, safe='') + '\\n' + expiry))."""
    message = urllib.parse.quote(resource_uri, safe="") + "\n" + str(expiry)
    digest = hmac.new(base64.b64decode(key), message.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def make_sas_token(key: str, resource_uri: str, ttl: int = 3600) -> str:
    """A token as the SDK makes it (for tests that use create_from_sastoken)."""
    expiry = int(time.time() + ttl)
    signature = urllib.parse.quote(sas_signature(key, resource_uri, expiry), safe="")
    sr = urllib.parse.quote(resource_uri, safe="")
    return f"SharedAccessSignature sr={sr}&sig={signature}&se={expiry}"


def check_sas(token: str, resource_uri: str, key: str, now: float) -> str | None:
    """None when the token is valid for resource_uri under key, else why not."""
    prefix = "SharedAccessSignature "
    if not token.startswith(prefix):
        return "password is not a SharedAccessSignature"
    fields: dict[str, str] = {}
    for part in token[len(prefix) :].split("&"):
        name, sep, value = part.partition("=")
        if not sep:
            return f"malformed token field {part!r}"
        fields[name] = urllib.parse.unquote(value)
    for name in ("sr", "sig", "se"):
        if name not in fields:
            return f"token lacks {name}"
    if fields["sr"].lower() != resource_uri.lower():
        return f"token is for {fields['sr']!r}, not {resource_uri!r}"
    try:
        expiry = int(fields["se"])
    except ValueError:
        return f"token expiry {fields['se']!r} is not a number"
    if expiry <= now:
        return f"token expired at {expiry} (now {int(now)})"
    try:
        expected = sas_signature(key, fields["sr"], expiry)
    except (binascii.Error, ValueError) as error:
        return f"the registered key is not base64: {error}"
    if not hmac.compare_digest(expected, fields["sig"]):
        return "signature does not match the identity's key"
    return None


def _subject_cn(peercert: Mapping[str, Any]) -> str | None:
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


class Gate:
    """The TLS listener on host:port (8883) in front of mosquitto at upstream_host:upstream_port.

    Runs an asyncio loop in a daemon thread. `credentials()` is called for each CONNECT and
    returns the registered identities by client id, so the hub can add identities at any time.
    start() / stop() open and close the listener; stop() also cuts every spliced connection,
    which is what a device sees when its hub goes away.
    """

    def __init__(
        self,
        host: str,
        port: int,
        certfile: Path,
        keyfile: Path,
        cafile: Path,
        hostname: str,
        upstream_host: str,
        upstream_port: int,
        credentials: Callable[[], Mapping[str, Credential]],
    ) -> None:
        self.host = host
        self.port = port
        self.hostname = hostname
        self.upstream = (upstream_host, upstream_port)
        self.credentials = credentials
        self.log = GateLog()
        self._lock = threading.Lock()
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(str(certfile), str(keyfile))
        self._context.load_verify_locations(cafile=str(cafile))
        # Optional: SAS clients send none; an X.509 client's certificate must verify.
        self._context.verify_mode = ssl.CERT_OPTIONAL
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._on_loop_error)
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"gate-{host}", daemon=True
        )
        self._thread.start()
        self._server: asyncio.base_events.Server | None = None
        # MQTT over WebSockets (port 443 for the SDK): off until listen_websockets().
        self.ws_port: int | None = None
        self._ws_server: asyncio.base_events.Server | None = None
        self.websocket_upgrades = 0  # WebSocket connections upgraded (then checked as on 8883)
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections = 0
        # hold_replies(): the broker's bytes to devices wait here (read by the loop's thread),
        # and the PUBACKs among them are counted.
        self._replies_held = False
        self._held_pubacks = 0
        # DPS (dps.Dps) when attached: it takes the CONNECTs with a DPS username. `aliases`:
        # other host names a device may use for this hub (the one DPS assigns).
        self.dps: Any = None
        self.aliases: tuple[str, ...] = ()

    # --- control, from any thread -------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        self._call(self._start())

    def listen_websockets(self, port: int = 443) -> None:
        """Also serve MQTT over WebSockets (TLS, path /$iothub/websocket) on host:port, with
        the same checks; from now on start() and stop() include it."""
        self.ws_port = port
        if self.listening:
            self._call(self._start_websockets())

    def stop(self, abort: bool = False) -> None:
        """Close the listener and every connection: with TLS close_notify and FIN, or with
        abort=True as a crashed host would, a TCP RST with no goodbye of any layer. Replies
        held by hold_replies() go with their connections; new connections get theirs."""
        self._call(self._stop(abort))
        with self._lock:
            self._replies_held = False
            self._held_pubacks = 0

    def hold_replies(self) -> None:
        """From now on, hold what the broker sends to connected devices (PUBACKs among it)
        until stop(): what a device publishes then stays in flight, unacknowledged."""
        with self._lock:
            self._replies_held = True

    def held_pubacks(self) -> int:
        """How many PUBACKs the gate holds back from devices now."""
        with self._lock:
            return self._held_pubacks

    def _holding(self) -> bool:
        with self._lock:
            return self._replies_held

    def _count_held_puback(self) -> None:
        with self._lock:
            self._held_pubacks += 1

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def decisions(self) -> list[tuple[str, bool, str]]:
        with self._lock:
            return list(self.log.decisions)

    def client_certs(self) -> list[tuple[str, str]]:
        """(client id, certificate serial in hex) of every accepted X.509 connection."""
        with self._lock:
            return list(self.log.client_certs)

    def publishes(self) -> list[Publish]:
        """Every PUBLISH devices sent through the gate, in order (what each connection sent,
        whether or not mosquitto got it before the connection ended)."""
        with self._lock:
            return list(self.log.publishes)

    def forget_publishes(self) -> None:
        with self._lock:
            self.log.publishes.clear()

    def _record_publish(self, publish: Publish) -> None:
        with self._lock:
            self.log.publishes.append(publish)

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=30)

    # --- the loop ------------------------------------------------------------------------

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # A client that rejects our certificate aborts the handshake: recorded, not printed.
        with self._lock:
            self.log.errors.append(str(context.get("exception") or context.get("message")))

    def _record(self, who: str, accepted: bool, reason: str) -> None:
        with self._lock:
            self.log.decisions.append((who, accepted, reason))

    async def _start(self) -> None:
        if self._server is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as error:
            sock.close()
            raise OSError(f"the gate cannot listen on {self.host}:{self.port}: {error}") from error
        sock.listen(64)
        self._server = await asyncio.start_server(
            self._serve,
            sock=sock,
            ssl=self._context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
        )
        await self._start_websockets()

    async def _start_websockets(self) -> None:
        if self.ws_port is None or self._ws_server is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.ws_port))
        except OSError as error:
            sock.close()
            raise OSError(
                f"the gate cannot listen on {self.host}:{self.ws_port}: {error}") from error
        sock.listen(64)
        self._ws_server = await asyncio.start_server(
            self._serve_websocket,
            sock=sock,
            ssl=self._context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            limit=websocket.MAX_REQUEST_BYTES,
        )

    async def _stop(self, abort: bool) -> None:
        server, self._server = self._server, None
        ws_server, self._ws_server = self._ws_server, None
        for each in (server, ws_server):
            if each is not None:
                each.close()
        for writer in list(self._writers):
            if abort:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # Linger 0: close() sends RST instead of FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
        if not abort and self._writers:
            # Let the close_notify and FIN go out before the tasks' cleanup aborts.
            await asyncio.wait(
                [asyncio.ensure_future(w.wait_closed()) for w in list(self._writers)], timeout=2.0
            )
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for each in (server, ws_server):
            if each is not None:
                await each.wait_closed()

    async def _serve_websocket(
        self, raw_reader: asyncio.StreamReader, raw_writer: asyncio.StreamWriter
    ) -> None:
        """A WebSocket connection: the upgrade, then the usual CONNECT check and splice on the
        unframed stream."""
        peer = str(raw_writer.get_extra_info("peername"))
        try:
            await asyncio.wait_for(websocket.handshake(raw_reader, raw_writer), CONNECT_TIMEOUT)
        except (websocket.HandshakeError, asyncio.IncompleteReadError, ConnectionError,
                asyncio.TimeoutError) as error:
            self._record(peer, False, f"websocket upgrade refused: {error!r}")
            raw_writer.transport.abort()
            return
        with self._lock:
            self.websocket_upgrades += 1
        reader = asyncio.StreamReader(limit=PUMP_CHUNK)
        unframing = asyncio.ensure_future(websocket.unframe(raw_reader, reader, raw_writer))
        try:
            await self._serve(reader, websocket.FramingWriter(raw_writer))  # type: ignore[arg-type]
        finally:
            unframing.cancel()
            await asyncio.gather(unframing, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        peer = str(writer.get_extra_info("peername"))
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            _nodelay(writer)
            try:
                raw = await asyncio.wait_for(self._read_packet(reader), CONNECT_TIMEOUT)
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError) as error:
                self._record(peer, False, f"no CONNECT: {error!r}")
                return
            except ProtocolError as error:
                self._record(peer, False, f"malformed CONNECT: {error}")
                return
            try:
                packet = parse_connect(raw[_fixed_header_size(raw) :])
            except ProtocolError as error:
                self._record(peer, False, f"malformed CONNECT: {error}")
                return
            peercert = writer.get_extra_info("peercert")
            dps = self.dps
            if dps is not None and dps.claims(packet):
                code, auth = dps.authenticate(packet, peercert)
                self._record(packet.client_id or peer, code == CONNACK_ACCEPTED, f"DPS: {auth}")
                if code != CONNACK_ACCEPTED:
                    await _refuse(writer, code)
                    return
                await dps.serve(reader, writer, packet, auth)
                return
            code, reason = self._authenticate(packet, peercert)
            self._record(packet.client_id or peer, code == CONNACK_ACCEPTED, reason)
            if code == CONNACK_ACCEPTED and peercert:
                with self._lock:
                    self.log.client_certs.append(
                        (packet.client_id, str(peercert.get("serialNumber", ""))))
            if code != CONNACK_ACCEPTED:
                await _refuse(writer, code)
                return
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            except OSError as error:
                # The broker is down while the front door is up.
                self._record(packet.client_id, False, f"broker unreachable: {error}")
                await _refuse(writer, CONNACK_SERVER_UNAVAILABLE)
                return
            self._writers.add(upstream_writer)
            _nodelay(upstream_writer)
            upstream_writer.write(raw)
            self._connections += 1
            counter = PublishCounter(self._connections, packet.client_id, self._record_publish)
            await asyncio.gather(
                _pump(reader, upstream_writer, writer.get_extra_info("socket"), counter),
                _pump(upstream_reader, writer, hold=self._holding,
                      held=HeldReplies(self._count_held_puback)),
                return_exceptions=True,
            )
        finally:
            for each in (writer, upstream_writer):
                if each is not None:
                    self._writers.discard(each)
                    each.transport.abort()
            self._tasks.discard(task)

    async def _read_packet(self, reader: asyncio.StreamReader) -> bytes:
        first = await reader.readexactly(1)
        if first[0] >> 4 != 1:
            raise ProtocolError(f"first packet type {first[0] >> 4} is not CONNECT")
        header = bytearray(first)
        length = 0
        for shift_index in range(4):
            byte = (await reader.readexactly(1))[0]
            header.append(byte)
            length |= (byte & 0x7F) << (7 * shift_index)
            if not byte & 0x80:
                break
        else:
            raise ProtocolError("remaining length longer than 4 bytes")
        if length > MAX_CONNECT_BYTES:
            raise ProtocolError(f"CONNECT of {length} bytes")
        return bytes(header) + await reader.readexactly(length)

    def _authenticate(
        self, packet: ConnectPacket, peercert: Mapping[str, Any] | None
    ) -> tuple[int, str]:
        if packet.protocol != "MQTT" or packet.level != 4:
            return CONNACK_IDENTIFIER_REJECTED, f"protocol {packet.protocol} level {packet.level}"
        credential = self.credentials().get(packet.client_id)
        if credential is None:
            return CONNACK_IDENTIFIER_REJECTED, f"unknown client id {packet.client_id!r}"
        named = (packet.username or "").split("/", 1)[0]
        hostname = named if named in self.aliases else self.hostname
        expected_user = f"{hostname}/{packet.client_id}/?"
        if packet.username is None or not packet.username.startswith(expected_user):
            return CONNACK_BAD_USERNAME_OR_PASSWORD, (
                f"username {packet.username!r} does not start with {expected_user!r}"
            )
        if "api-version=" not in packet.username:
            return CONNACK_BAD_USERNAME_OR_PASSWORD, "username lacks api-version"
        if peercert:
            common_name = _subject_cn(peercert)
            if not credential.x509:
                return CONNACK_NOT_AUTHORIZED, f"{packet.client_id} is not an X.509 identity"
            if common_name != credential.device_id:
                return CONNACK_NOT_AUTHORIZED, (
                    f"certificate CN {common_name!r} is not device {credential.device_id!r}"
                )
            return CONNACK_ACCEPTED, f"X.509 CN={common_name}"
        if packet.password is None:
            return CONNACK_NOT_AUTHORIZED, "neither a client certificate nor a SAS token"
        if credential.key is None:
            return CONNACK_NOT_AUTHORIZED, f"{packet.client_id} has no SAS key registered"
        resource = f"{hostname}/devices/{credential.device_id}"
        if credential.module_id is not None:
            resource += f"/modules/{credential.module_id}"
        try:
            token = packet.password.decode()
        except UnicodeDecodeError:
            return CONNACK_NOT_AUTHORIZED, "password is not UTF-8"
        problem = check_sas(token, resource, credential.key, time.time())
        if problem is not None:
            return CONNACK_NOT_AUTHORIZED, problem
        return CONNACK_ACCEPTED, "SAS token valid"


async def _refuse(writer: asyncio.StreamWriter, code: int) -> None:
    """A refused CONNACK, then a clean close (TLS close_notify, FIN), as IoT Hub does."""
    writer.write(bytes([0x20, 0x02, 0x00, code]))
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2.0)
    except (OSError, asyncio.TimeoutError):
        pass  # the client left first; the finally of _serve aborts what is left


def _fixed_header_size(raw: bytes) -> int:
    _, offset = _read_remaining_length(raw, 1)
    return offset


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    quickack: Any = None,
    counter: PublishCounter | None = None,
    hold: Callable[[], bool] = lambda: False,
    held: HeldReplies | None = None,
) -> None:
    """Copy until EOF or error, then close the far side (its pump then ends too).

    `quickack`: the device's socket, re-armed with TCP_QUICKACK after each read (Linux clears
    it again by itself). The SDK leaves Nagle on and, between two twin calls, writes a PUBACK
    and then the next PUBLISH; held back until our delayed ACK, each back-to-back twin call
    took about 45 ms instead of about 6 ms. `counter`: records the PUBLISH packets on the way.
    `hold`: while it answers True, what was read waits before it is written. `held` reads
    every chunk, told whether it is held."""
    try:
        while True:
            chunk = await reader.read(PUMP_CHUNK)
            if not chunk:
                break
            holding = hold()
            if held is not None:
                held.holding = holding
                held.feed(chunk)
            while holding and hold():
                await asyncio.sleep(HOLD_POLL_S)
            if quickack is not None and hasattr(socket, "TCP_QUICKACK"):
                quickack.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            if counter is not None:
                counter.feed(chunk)
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.transport.abort()
