"""The IoT Hub uplink's connection: its states and the transitions allowed between them, the
MQTT client's errors and what a failed connect or request means for the link (classify), the
uplink's counters, and the helpers for blocking calls (call_with_timeout) and reconnect
delays (backoff_delay). agent.uplink.iothub drives
them; docs/uplink.md describes the behaviour.

States (LinkState) and why they change:

    connecting ──▶ connected ──▶ disconnected ──▶ connecting ...
        │  │                          ▲   │
        │  └──────── transient ───────┘   └──▶ failed (the identity could not be reloaded)
        └──── refused (credentials, TLS) ──▶ failed ──▶ connecting (the identity changed, or
                                                        refused_retry_s passed)
    any state but closed ──▶ closed (close())

The reported state (`status()["state"]`) is the state's name, followed by ": reason" when the
state has one ("disconnected: send failed: Unreachable: connection lost").
"""

from __future__ import annotations

import enum
import logging
import random
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from agent.clock import wall_time
from agent.record import record

log = logging.getLogger("agent.uplink")

T = TypeVar("T")


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # waiting for the next attempt (backoff)
    FAILED = "failed"  # refused: waiting for the identity to change (or refused_retry_s)
    CLOSED = "closed"


# The transitions the uplink may make; anything else is a bug (InvalidTransition).
TRANSITIONS: Mapping[LinkState, frozenset[LinkState]] = {
    LinkState.CONNECTING: frozenset(
        {LinkState.CONNECTED, LinkState.DISCONNECTED, LinkState.FAILED, LinkState.CLOSED}),
    LinkState.CONNECTED: frozenset({LinkState.DISCONNECTED, LinkState.CLOSED}),
    # disconnected -> disconnected: a new reason (an error while waiting to reconnect);
    # disconnected -> failed: the identity could not be reloaded.
    LinkState.DISCONNECTED: frozenset(
        {LinkState.CONNECTING, LinkState.DISCONNECTED, LinkState.FAILED, LinkState.CLOSED}),
    # failed -> failed: a new reason (the identity file changed but still does not load).
    LinkState.FAILED: frozenset(
        {LinkState.CONNECTING, LinkState.DISCONNECTED, LinkState.FAILED, LinkState.CLOSED}),
    LinkState.CLOSED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A state change TRANSITIONS does not allow."""


class ConnectionStateMachine:
    """The uplink's connection state: one state at a time, changed only along TRANSITIONS;
    every change is logged (debug) and counted by target state. Thread-safe: the worker
    changes it, the loop and close() read it."""

    def __init__(self, redact: Callable[[str], str] = lambda text: text) -> None:
        self._lock = threading.Lock()
        self._redact = redact
        self._state = LinkState.CONNECTING
        self._reason = ""
        self._since = wall_time()
        self._entered: dict[LinkState, int] = dict.fromkeys(LinkState, 0)

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def since(self) -> float:
        """wall_time() of the last change of state or reason."""
        return self._since

    def is_(self, state: LinkState) -> bool:
        return self._state is state

    def to(self, state: LinkState, reason: str = "") -> None:
        """Change to `state` (with a reason: why the link is down). Raises InvalidTransition
        when TRANSITIONS does not allow it; the same state with the same reason is no change,
        and nothing changes a closed link."""
        reason = self._redact(reason)
        with self._lock:
            old = self._state
            if old is state and reason == self._reason:
                return
            if old is LinkState.CLOSED:
                # A worker that close() abandoned inside a blocking call may still report
                # when the call ends; closed is final, so that report changes nothing.
                log.debug("iothub: closed; ignoring %s", state.value)
                return
            if state not in TRANSITIONS[old]:
                raise InvalidTransition(f"uplink state {old.value} -> {state.value}")
            self._state, self._reason, self._since = state, reason, wall_time()
            self._entered[state] += 1
        log.debug("iothub: %s -> %s%s", old.value, state.value, f": {reason}" if reason else "")

    def describe(self) -> str:
        """The reported state: "connected", "disconnected: <reason>", ..."""
        with self._lock:
            state, reason = self._state, self._reason
        return f"{state.value}: {reason}" if reason else state.value

    def entered(self) -> dict[str, int]:
        """How often each state was entered (transitions by target state)."""
        with self._lock:
            return {state.value: n for state, n in self._entered.items()}


# -- what a failed call means -------------------------------------------------------------------


class Outcome(enum.Enum):
    # The connection is unusable: return what is in flight, reconnect after a backoff.
    RECONNECT = "reconnect"
    # The hub refused who we are (credentials) or TLS failed on a certificate: no retry can
    # help until the identity or the CA changes.
    REFUSED = "refused"
    # The hub refused this one request (a 4xx status); the connection is fine.
    REJECTED = "rejected"


@record(frozen=True)
class Failure:
    reason: str  # one line for the log and the state
    outcome: Outcome
    abandon_client: bool = False  # a call is still blocked in the client: make a new one


class CallTimeout(Exception):
    """A blocking call or a request did not complete in time (a connect is left running in
    its thread; a request's answer may still come): the client is not to be trusted."""


class HubError(Exception):
    """A failed connect or request of agent.uplink.mqtt; the subclass says what it means."""


class Refused(HubError):
    """The hub refused who we are: CONNACK 4 (user name or password) or 5 (not authorized)."""


class Unreachable(HubError):
    """No usable connection: CONNACK 1-3, the connection lost, a publish without one."""


class Rejected(HubError):
    """The hub answered a request with a 4xx status (but 429): this request, not the
    connection, is refused."""

    def __init__(self, what: str, status: int, body: bytes = b"") -> None:
        detail = body[:200].decode("utf-8", "replace")
        super().__init__(f"{what}: status {status}" + (f": {detail}" if detail else ""))
        self.status = status


class Busy(HubError):
    """The hub answered a request with 429 or a 5xx status: try again later."""


def _cause_chain(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        chain.append(cur)
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return chain


def _first(chain: list[BaseException], kind: type[BaseException] | tuple[type[BaseException], ...]
           ) -> BaseException | None:
    return next((e for e in chain if isinstance(e, kind)), None)


# OpenSSL's reasons when the hub's TLS end refused our client certificate (an X.509 identity
# signed by a CA the hub does not know, or a certificate it does not accept).
_CLIENT_CERT_ALERTS = frozenset({
    "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "TLSV1_ALERT_ACCESS_DENIED",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
})

def classify(err: BaseException) -> Failure:
    """What a failed connect or request means, by the types of the exception and its causes
    (agent.uplink.mqtt's errors, ssl's, the socket's, PySocks')."""
    chain = _cause_chain(err)
    ssl_error = _first(chain, ssl.SSLError)
    if isinstance(ssl_error, ssl.SSLCertVerificationError):
        return Failure(f"TLS: the hub's certificate is not trusted ({ssl_error}); check --ca-file / "
                       "$IOTHUB_CA_FILE", Outcome.REFUSED)
    if _first(chain, Refused) is not None:
        return Failure("authentication refused by the hub (wrong key or certificate, or the "
                       "identity is disabled or unknown)", Outcome.REFUSED)
    if isinstance(ssl_error, ssl.SSLError) and ssl_error.reason in _CLIENT_CERT_ALERTS:
        return Failure(f"TLS: the hub refused the client certificate ({ssl_error})",
                       Outcome.REFUSED)
    if isinstance(err, CallTimeout):
        return Failure(str(err), Outcome.RECONNECT, abandon_client=True)
    if isinstance(err, Rejected):
        return Failure(f"the hub refused the request: {err}", Outcome.REJECTED)
    if isinstance(err, ValueError):  # the client's own checks (a topic or payload too long)
        return Failure(f"the client refused the request: {err}", Outcome.REJECTED)
    inner = chain[-1]
    if inner is not err and str(inner):
        reason = f"{type(err).__name__}: {type(inner).__name__}: {inner}"
    else:
        reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    # Unreachable, Busy and anything unforeseen: a new connection is the safe answer.
    return Failure(reason, Outcome.RECONNECT)


# -- counters -------------------------------------------------------------------------------------

COUNTER_NAMES = (
    "delivered", "messages", "parts", "json_fallback", "send_errors", "connects", "disconnects",
    "reported_patches", "desired_patches", "rejected", "confirm_missing", "timeouts",
    "provisions", "provision_errors",  # DPS registrations answered / failed (provisioning.py)
)


class UplinkCounters:
    """The uplink's counters, changed by the worker, paho's thread and the loop:
    every change and read under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTER_NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n  # KeyError for a name not in COUNTER_NAMES

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __iter__(self) -> Iterator[str]:
        return iter(COUNTER_NAMES)


# -- blocking calls and backoff -------------------------------------------------------------------


class _CallThreads:
    """Daemon threads for blocking calls (paho's connect, a client's shutdown), kept waiting
    IDLE_S after a call for the next one. Sends and twin requests need none: they complete
    on paho's thread. A thread whose call never returns is simply never back: the next call
    gets another."""

    IDLE_S = 30.0

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._jobs: deque[tuple[str, Callable[[], None]]] = deque()
        self._waiting = 0

    def start(self, what: str, job: Callable[[], None]) -> None:
        with self._cond:
            self._jobs.append((what, job))
            # A waiting thread that was notified counts as waiting until it takes the lock:
            # spare threads for every queued job, or one more.
            if self._waiting >= len(self._jobs):
                self._cond.notify()
                return
        threading.Thread(target=self._serve, name=f"iothub-{what}", daemon=True).start()

    def _serve(self) -> None:
        thread = threading.current_thread()
        while True:
            with self._cond:
                while not self._jobs:
                    self._waiting += 1
                    woken = self._cond.wait(self.IDLE_S)
                    self._waiting -= 1
                    if not woken and not self._jobs:
                        return
                what, job = self._jobs.popleft()
            thread.name = f"iothub-{what}"
            job()
            thread.name = "iothub-idle"


_CALL_THREADS = _CallThreads()


def call_with_timeout(fn: Callable[[], T], timeout: float, what: str) -> T:
    """fn() in a daemon thread; its result or its exception, or CallTimeout after `timeout`
    seconds (the call is abandoned; the caller treats the client as unusable)."""
    box: list[tuple[bool, Any]] = []
    done = threading.Event()

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as err:  # handed to the caller's thread  # noqa: BLE001
            box.append((False, err))
        finally:
            done.set()

    _CALL_THREADS.start(what, run)
    if not done.wait(timeout):
        raise CallTimeout(f"{what} did not return within {timeout:g} s")
    ok, value = box[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
    """Seconds before reconnect attempt `attempt` (1, 2, ...): exponential, capped, jittered
    so that a fleet that lost the hub together does not come back together."""
    base = min(hi, lo * 2.0 ** min(max(attempt, 1) - 1, 40))
    return min(hi, max(lo, base * rng.uniform(0.75, 1.25)))
