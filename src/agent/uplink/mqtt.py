"""IoT Hub's MQTT, spoken by the agent itself on paho-mqtt 1.6: the connection (TLS on 8883,
or WebSockets on 443, optionally through an HTTP CONNECT proxy), telemetry publishes
completed by their PUBACK, and the request/response topics of the twin and of DPS.
agent.uplink.iothub drives it; docs/uplink.md says why not azure-iot-device.

What IoT Hub expects (its MQTT documentation; the forms azure-iot-device 2.14.0 sends):
- CONNECT: MQTT 3.1.1, client id "<device>" or "<device>/<module>", user name
  "<hub host>/<client id>/?api-version=2019-10-01&DeviceClientType=<agent>", password a SAS
  token (agent.uplink.sas) or none with an X.509 client certificate. DPS: client id the
  registration id, user name "<ID scope>/registrations/<registration id>/api-version=2019-03-31
  &ClientVersion=<agent>".
- telemetry: QoS 1 PUBLISH to "devices/<d>[/modules/<m>]/messages/events/<property bag>",
  the bag url-encoded: system properties ($.mid, $.ct, $.ce, $.ifid) then the custom ones,
  sorted by name.
- the twin: SUBSCRIBE "$iothub/twin/res/#" and "$iothub/twin/PATCH/properties/desired/#";
  PUBLISH "$iothub/twin/GET/?$rid=R" and "$iothub/twin/PATCH/properties/reported/?$rid=R";
  the answer arrives on "$iothub/twin/res/<status>/?$rid=R[&$version=V]"; desired patches on
  "$iothub/twin/PATCH/properties/desired/?$version=V".

Threads. paho's network thread (loop_start) reads and writes the socket; the uplink's worker
calls publish() and request() and never blocks on the socket itself. A PUBACK, an answer or the
loss of the connection arrives on paho's thread and only completes a waiter or calls the
owner's callback (which must not block). Why paho's own thread rather than loop_forever in the
worker: the worker waits on the agent's loop for batches and on twin answers, paho on the
socket; one select() for both would mean reimplementing paho's loop.

A client is used for one connection: clean session, subscriptions made anew, and never
reconnected (paho would send again what it still holds, while the worker sends those batches
on the next connection too: docs/uplink.md, the bound on copies).
"""

from __future__ import annotations

import itertools
import json
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import paho.mqtt.client as paho  # type: ignore[import-untyped]

from agent import __version__
from agent.clock import wall_time
from agent.config.local import ProxySettings
from agent.record import field, record
from agent.uplink.connection import (
    Busy,
    CallTimeout,
    HubError,
    Refused,
    Rejected,
    Unreachable,
    call_with_timeout,
)

log = logging.getLogger("agent.uplink")

IOTHUB_API_VERSION = "2019-10-01"
DPS_API_VERSION = "2019-03-31"
CLIENT_TYPE = f"iot-micro-agent/{__version__}"
SECURITY_INTERFACE_ID = "urn:azureiot:Security:SecurityAgent:1"
MQTT_PORT = 8883
WEBSOCKET_PORT = 443
WEBSOCKET_PATH = "/$iothub/websocket"

TWIN_RESPONSES = "$iothub/twin/res/"
TWIN_DESIRED = "$iothub/twin/PATCH/properties/desired/"
DPS_RESPONSES = "$dps/registrations/res/"

# MQTT 3.1.1 CONNACK return codes.
_CONNACK_REASONS = {
    1: "unacceptable protocol version", 2: "client identifier rejected",
    3: "server unavailable", 4: "bad user name or password", 5: "not authorized",
}


# -- topics and properties -------------------------------------------------------------------


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def client_id(device_id: str, module_id: str | None) -> str:
    return device_id if module_id is None else f"{device_id}/{module_id}"


def hub_username(hostname: str, device_id: str, module_id: str | None) -> str:
    # The host name and client id are not encoded; the query is (as the SDK's).
    query = urllib.parse.urlencode([("api-version", IOTHUB_API_VERSION),
                                    ("DeviceClientType", CLIENT_TYPE)], quote_via=urllib.parse.quote)
    return f"{hostname}/{client_id(device_id, module_id)}/?{query}"


def dps_username(id_scope: str, registration_id: str) -> str:
    query = urllib.parse.urlencode([("api-version", DPS_API_VERSION),
                                    ("ClientVersion", CLIENT_TYPE)], quote_via=urllib.parse.quote)
    return f"{id_scope}/registrations/{registration_id}/{query}"


def telemetry_prefix(device_id: str, module_id: str | None) -> str:
    """The topic of device-to-cloud messages, up to the property bag."""
    if module_id is None:
        return f"devices/{quote(device_id)}/messages/events/"
    return f"devices/{quote(device_id)}/modules/{quote(module_id)}/messages/events/"


def property_bag(message_id: str | None, content_type: str | None,
                 content_encoding: str | None, security: bool,
                 custom: Mapping[str, str]) -> str:
    """The url-encoded property bag: the system properties in IoT Hub's order, then the
    custom properties sorted by name."""
    system = [(name, value) for name, value in (
        ("$.mid", message_id), ("$.ct", content_type), ("$.ce", content_encoding),
        ("$.ifid", SECURITY_INTERFACE_ID if security else None)) if value]
    pairs = [*system, *sorted(custom.items())]
    return "&".join(f"{quote(name)}={quote(value)}" for name, value in pairs)


@record(frozen=True)
class Response:
    """An answer on a response topic: "<prefix><status>/?$rid=R&name=value...". """

    status: int
    params: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else {}


def parse_response(topic: str, prefix: str, body: bytes) -> Response | None:
    """The response on `topic`, or None when it is not one (another prefix, no status)."""
    if not topic.startswith(prefix):
        return None
    status_text, _, rest = topic[len(prefix):].partition("/")
    if not status_text.isdigit():
        return None
    query = rest.removeprefix("?")
    return Response(int(status_text), dict(urllib.parse.parse_qsl(query, keep_blank_values=True)),
                    body)


def check_status(what: str, response: Response) -> Response:
    """The response when its status is 2xx; Rejected for a 4xx (but 429), Busy otherwise."""
    status = response.status
    if 200 <= status < 300:
        return response
    if 400 <= status < 500 and status != 429:
        raise Rejected(what, status, response.body)
    raise Busy(f"{what}: status {status}")


# -- the client ---------------------------------------------------------------------------


@record(frozen=True)
class Endpoint:
    """Where and as whom to connect. `host` is the TCP peer (the gateway, if any), which the
    hub's certificate must name; `password` a SAS token (None with a client certificate)."""

    host: str
    client_id: str
    username: str
    password: str | None = field(default=None, repr=False)
    ca_pem: str | None = field(default=None, repr=False)
    cert_file: str | None = None
    key_file: str | None = None
    websockets: bool = False
    proxy: ProxySettings | None = None
    keep_alive_s: int = 60

    @property
    def port(self) -> int:
        return WEBSOCKET_PORT if self.websockets else MQTT_PORT


def tls_context(ca_pem: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """TLS 1.2 (as the SDK: with 1.3 a refused client certificate shows only after the
    handshake), the hub's certificate verified against ca_pem or the system's store, its
    name checked; the client certificate when given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    if ca_pem is not None:
        context.load_verify_locations(cadata=ca_pem)
    else:
        context.load_default_certs()
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


class _Paho(paho.Client):  # type: ignore[misc]
    """paho's Client whose network thread reports how it ended: paho 1.6 lets an ssl error
    on a write (SSLEOFError when the peer went away mid-stream) end its loop_start thread
    without calling on_disconnect, and the connection would look alive until a timeout."""

    crashed: Callable[[BaseException], None] = staticmethod(lambda err: None)

    def close_sockets(self) -> None:
        """The connection's socket and the wake-up socket pair, closed now (paho's own
        _reset_sockets, which it otherwise runs only from __del__)."""
        self._reset_sockets()

    def _thread_main(self) -> None:
        try:
            super()._thread_main()
        except Exception as err:  # noqa: BLE001  # handed to the owner
            self._sock_close()
            self.crashed(err)


class _Waiter:
    __slots__ = ("done", "error", "response")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.response: Response | None = None
        self.error: BaseException | None = None


class MqttClient:
    """One MQTT connection to IoT Hub (or DPS). connect() blocks up to its deadline; then
    send() publishes at QoS 1 and `on_sent(tag)` is called (paho's thread) on its PUBACK;
    request() publishes and waits for the answer with the same $rid; `on_message(topic,
    payload)` gets every other PUBLISH (desired patches), `on_lost()` the end of the
    connection. Callbacks run on paho's thread and must not block."""

    def __init__(self, endpoint: Endpoint, response_prefix: str, *,
                 on_sent: Callable[[object], None] = lambda tag: None,
                 on_message: Callable[[str, bytes], None] = lambda topic, payload: None,
                 on_lost: Callable[[], None] = lambda: None) -> None:
        self.endpoint = endpoint
        self._response_prefix = response_prefix
        self._on_sent = on_sent
        self._on_message_cb = on_message
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._connack = threading.Event()
        self._connack_rc: int | None = None
        self._connected = False
        self._ended = False
        self._lost_reason = ""
        self._rids = itertools.count(1)
        self._waiters: dict[str, _Waiter] = {}
        self._subacks: dict[int, _Waiter] = {}
        self._tags: dict[int, tuple[object, float]] = {}  # mid -> (tag, monotonic sent)
        self._early: set[int] = set()  # PUBACKs seen before publish() returned their mid
        client = _Paho(client_id=endpoint.client_id, clean_session=True,
                             protocol=paho.MQTTv311,
                             transport="websockets" if endpoint.websockets else "tcp",
                             reconnect_on_failure=False)
        if endpoint.websockets:
            client.ws_set_options(path=WEBSOCKET_PATH)
        if endpoint.proxy is not None:
            import socks  # type: ignore[import-untyped]  # PySocks: paho's proxy support

            proxy = endpoint.proxy
            client.proxy_set(proxy_type=socks.HTTP, proxy_addr=proxy.host, proxy_port=proxy.port,
                             proxy_username=proxy.username, proxy_password=proxy.password)
        client.tls_set_context(tls_context(endpoint.ca_pem, endpoint.cert_file, endpoint.key_file))
        if endpoint.username:
            client.username_pw_set(endpoint.username, endpoint.password)
        # The window bounds what is in flight (agent.uplink.iothub); paho must not hold
        # publishes back behind its own default of 20.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.crashed = self._on_crash
        self._client = client

    # -- connection ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def lost_reason(self) -> str:
        return self._lost_reason

    def connect(self, timeout: float, subscriptions: Iterable[str] = ()) -> None:
        """Connect and subscribe (QoS 1 each), within `timeout` seconds. Raises Refused,
        Unreachable, CallTimeout ("connect did not return within ...") or the socket's,
        TLS's or the proxy's own error."""
        deadline = time.monotonic() + timeout
        ep = self.endpoint
        # paho's connect() resolves, connects, passes the proxy and does the TLS handshake
        # in the caller's thread with its own timeouts (the handshake waits up to keep_alive):
        # in a throwaway thread with our deadline instead. Once per connection.
        call_with_timeout(lambda: self._client.connect(ep.host, ep.port, ep.keep_alive_s),
                          timeout, "connect")
        self._client.loop_start()
        if not self._connack.wait(max(0.0, deadline - time.monotonic())):
            raise CallTimeout(f"connect did not return within {timeout:g} s")
        rc = self._connack_rc
        if rc in (4, 5):
            raise Refused(f"CONNACK {rc}: {_CONNACK_REASONS[rc]}")
        if rc != 0:
            raise Unreachable(f"CONNACK {rc}: {_CONNACK_REASONS.get(rc, 'refused')}"
                              if rc is not None else self._lost_reason or "connection closed")
        topics = list(subscriptions)
        if topics:
            waiter = _Waiter()
            with self._lock:
                result, mid = self._client.subscribe([(topic, 1) for topic in topics])
                if result == paho.MQTT_ERR_SUCCESS:
                    self._subacks[mid] = waiter
            if result != paho.MQTT_ERR_SUCCESS:
                raise Unreachable(f"subscribe: {paho.error_string(result)}")
            self._wait(waiter, deadline, timeout, "subscribe")
            assert waiter.response is not None
            if any(qos == 0x80 for qos in waiter.response.body):
                raise Rejected("subscribe", 0x80, b"")

    def shutdown(self) -> None:
        """End the connection (DISCONNECT when there is one) and paho's thread."""
        with self._lock:
            self._ended = True
        try:
            self._client.disconnect()
        except Exception as err:  # noqa: BLE001
            log.debug("mqtt: disconnect: %s", err)
        self._client.loop_stop()
        # paho closes its wake-up socket pair (and a socket a failed connect left) only in
        # __del__, and a client is kept alive by the cycles of its callbacks until the cyclic
        # collector runs: with a client per connection, every reconnect held on to two or
        # three descriptors for a while (the soak's descriptor slope). Its thread has ended
        # (loop_stop joined it), so they are closed here.
        self._client.close_sockets()
        self._fail_all(Unreachable("the client was shut down"))

    # -- sends and requests -----------------------------------------------------------------

    def send(self, topic: str, payload: bytes, tag: object) -> None:
        """PUBLISH at QoS 1; on_sent(tag) follows on its PUBACK. Raises Unreachable when
        the connection is gone."""
        if not self._connected:
            raise Unreachable(self._lost_reason or "not connected")
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise Unreachable(f"publish: {paho.error_string(info.rc)}")
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                acked = True
            else:
                self._tags[info.mid] = (tag, time.monotonic())
                acked = False
        if acked:
            self._on_sent(tag)

    def oldest_unacked(self) -> float | None:
        """time.monotonic() of the oldest send still waiting for its PUBACK."""
        with self._lock:
            for _, sent_at in self._tags.values():
                return sent_at
        return None

    def request(self, topic: str, payload: bytes, timeout: float, what: str) -> Response:
        """PUBLISH to topic + "$rid=R" and wait for the answer on the response topics.
        Raises CallTimeout, Unreachable."""
        if not self._connected:
            raise Unreachable(self._lost_reason or "not connected")
        rid = str(next(self._rids))
        waiter = _Waiter()
        with self._lock:
            self._waiters[rid] = waiter
        sep = "&" if "?" in topic else "?"
        # QoS 0: the answer is the acknowledgement (and a PUBACK would have no taker).
        info = self._client.publish(f"{topic}{sep}$rid={rid}", payload, qos=0)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            with self._lock:
                self._waiters.pop(rid, None)
            raise Unreachable(f"{what}: {paho.error_string(info.rc)}")
        try:
            self._wait(waiter, time.monotonic() + timeout, timeout, what)
        finally:
            with self._lock:
                self._waiters.pop(rid, None)
        assert waiter.response is not None
        return waiter.response

    def _wait(self, waiter: _Waiter, deadline: float, timeout: float, what: str) -> None:
        if not waiter.done.wait(max(0.0, deadline - time.monotonic())):
            raise CallTimeout(f"{what} did not return within {timeout:g} s")
        if waiter.error is not None:
            raise waiter.error

    # -- paho's callbacks (its thread) --------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: int) -> None:
        self._connack_rc = rc
        self._connected = rc == 0
        self._connack.set()

    def _on_crash(self, err: BaseException) -> None:
        self._ended_with(f"connection lost ({type(err).__name__}: {err})")

    def _on_disconnect(self, client: Any, userdata: Any, rc: int) -> None:
        reason = "connection lost" if rc != 0 else "disconnected"
        if rc not in (0, paho.MQTT_ERR_CONN_LOST):
            reason += f" ({paho.error_string(rc)})"
        self._ended_with(reason)

    def _ended_with(self, reason: str) -> None:
        was = self._connected
        self._connected = False
        self._lost_reason = reason
        with self._lock:
            ended = self._ended
        # reconnect_on_failure=False: paho's thread ends here instead of reconnecting.
        self._connack.set()
        self._fail_all(Unreachable(reason))
        if was and not ended:
            self._on_lost()

    def _fail_all(self, error: HubError) -> None:
        with self._lock:
            waiters = [*self._waiters.values(), *self._subacks.values()]
            self._waiters.clear()
            self._subacks.clear()
        for waiter in waiters:
            waiter.error = error
            waiter.done.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int) -> None:
        with self._lock:
            entry = self._tags.pop(mid, None)
            if entry is None:
                self._early.add(mid)
                return
        self._on_sent(entry[0])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, granted: Any) -> None:
        with self._lock:
            waiter = self._subacks.pop(mid, None)
        if waiter is not None:
            waiter.response = Response(0, {}, bytes(q & 0xFF for q in granted))
            waiter.done.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        topic = str(message.topic)
        payload = bytes(message.payload)
        response = parse_response(topic, self._response_prefix, payload)
        if response is not None:
            with self._lock:
                waiter = self._waiters.get(response.params.get("$rid", ""))
            if waiter is not None:
                waiter.response = response
                waiter.done.set()
            return
        try:
            self._on_message_cb(topic, payload)
        except Exception:  # paho's thread must outlive a bad message
            log.exception("mqtt: handling a message on %s", topic)


# -- DPS ----------------------------------------------------------------------------------------

DPS_REGISTER = "$dps/registrations/PUT/iotdps-register/"
DPS_OPERATION_STATUS = "$dps/registrations/GET/iotdps-get-operationstatus/"
DPS_DEFAULT_RETRY_S = 2.0  # when DPS names no retry-after (as the SDK's default)
DPS_MAX_RETRY_S = 20.0


def _retry_after(response: Response) -> float:
    try:
        value = float(response.params.get("retry-after", DPS_DEFAULT_RETRY_S))
    except ValueError:
        value = DPS_DEFAULT_RETRY_S
    return min(max(value, 0.0), DPS_MAX_RETRY_S)


def register(endpoint: str, id_scope: str, registration_id: str, *, key: str | None,
             cert_file: str | None, key_file: str | None, ca_pem: str | None,
             timeout: float, ttl_s: int = 3600) -> dict[str, Any]:
    """Register with DPS over MQTT and wait for the outcome, within `timeout` seconds: PUT
    iotdps-register, then GET iotdps-get-operationstatus after each retry-after while the
    registration is "assigning". Returns DPS's last answer ({"status": "assigned",
    "registrationState": {"assignedHub", "deviceId", ...}} when assigned). Authenticates
    with a SAS token for "<ID scope>/registrations/<registration id>" signed with `key`, or
    with the client certificate. Raises Refused, Unreachable, Rejected, Busy, CallTimeout."""
    from agent.uplink import sas

    deadline = time.monotonic() + timeout
    password = None
    if key is not None:
        resource = f"{id_scope}/registrations/{registration_id}"
        password = sas.key_token(key, resource, int(wall_time()) + ttl_s, "registration")
    client = MqttClient(Endpoint(
        host=endpoint, client_id=registration_id, username=dps_username(id_scope, registration_id),
        password=password, ca_pem=ca_pem, cert_file=None if key is not None else cert_file,
        key_file=None if key is not None else key_file), DPS_RESPONSES)

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CallTimeout(f"provision did not return within {timeout:g} s")
        return remaining

    try:
        client.connect(timeout, (DPS_RESPONSES + "#",))
        body = json.dumps({"registrationId": registration_id}).encode()
        response = client.request(DPS_REGISTER, body, left(), "register")
        while True:
            if response.status == 401:
                raise Refused("DPS answered 401")
            if response.status == 429 or response.status >= 500:
                # Throttled or busy: the same request again after retry-after.
                time.sleep(min(_retry_after(response), left()))
                response = client.request(DPS_REGISTER, body, left(), "register")
                continue
            answer = check_status("register", response).json()
            if not isinstance(answer, dict):
                raise Rejected("register", response.status, response.body)
            if answer.get("status") != "assigning":
                return answer
            operation = str(answer.get("operationId", ""))
            time.sleep(min(_retry_after(response), left()))
            response = client.request(
                f"{DPS_OPERATION_STATUS}?operationId={quote(operation)}", b"", left(),
                "operation status")
    finally:
        client.shutdown()
