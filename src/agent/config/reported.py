"""The module twin's reported properties: what the agent tells the hub about itself.

`build_reported()` makes the whole document from the effective configuration (flat, under
the same names as the desired properties, as the Defender for IoT micro agent reports it),
`latest_state` and `latest_invalid_fields`, each collector's state, the counters, the agent
version and the outbox depth. `ReportedState` remembers what the hub has and returns only
what changed, as a JSON merge patch (the form IoT Hub applies reported patches in).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from agent import __version__
from agent.config.schema import COLLECTORS, FIELDS, Config, Json
from agent.config.store import LATEST_FAILED, LATEST_SUCCESS
from agent.record import record

# At most this many names (and reasons) are reported; the rest are summed up in one entry, so
# that a desired document full of junk cannot push the reported document past the hub's
# 32 KB limit.
MAX_REPORTED_INVALID = 64
MAX_REASON_CHARS = 200

STATES = ("running", "disabled", "unavailable")


@record(frozen=True)
class CollectorState:
    """One collector's state as reported: running (with the source it reads), disabled by
    configuration, or unavailable with the reason (e.g. "audit: owned by auditd, using
    multicast" for a degraded source, or "needs CAP_NET_ADMIN")."""

    state: str
    reason: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"collector state must be one of {STATES}, not {self.state!r}")

    @classmethod
    def running(cls, source: str = "", reason: str = "") -> CollectorState:
        return cls("running", reason, source)

    @classmethod
    def disabled(cls) -> CollectorState:
        return cls("disabled")

    @classmethod
    def unavailable(cls, reason: str) -> CollectorState:
        return cls("unavailable", reason)

    def to_json(self) -> dict[str, Json]:
        out: dict[str, Json] = {"state": self.state}
        if self.reason:
            out["reason"] = self.reason
        if self.source:
            out["source"] = self.source
        return out


_FORBIDDEN_IN_KEYS = frozenset(". $")


def reported_key(name: str) -> str:
    """A property name IoT Hub accepts: no '.', '$', space or control character (each becomes
    '_'), at most 128 characters."""
    cleaned = "".join(
        "_" if c in _FORBIDDEN_IN_KEYS or not c.isprintable() else c for c in name[:128]
    )
    return cleaned or "_"


def _counters(counters: Mapping[str, Any], depth: int = 0) -> dict[str, Json]:
    out: dict[str, Json] = {}
    for key, value in counters.items():
        if not isinstance(key, str):
            raise TypeError(f"counter names are strings, not {key!r}")
        if isinstance(value, Mapping) and depth < 2:
            out[reported_key(key)] = _counters(value, depth + 1)
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out[reported_key(key)] = value
        else:
            raise TypeError(f"counter {key!r}: expected a count or a mapping, got {value!r}")
    return out


def _capped(items: list[str]) -> list[str]:
    if len(items) <= MAX_REPORTED_INVALID:
        return items
    keep = MAX_REPORTED_INVALID - 1
    return items[:keep] + [f"... and {len(items) - keep} more"]


def build_reported(
    config: Config,
    invalid_reasons: Mapping[str, str],
    collectors: Mapping[str, CollectorState],
    counters: Mapping[str, Any],
    *,
    agent_version: str = __version__,
    outbox_depth: int = 0,
) -> dict[str, Json]:
    """The whole reported document.

    invalid_reasons: ConfigStore.invalid_reasons (name -> reason). collectors: name ->
    CollectorState; a collector of COLLECTORS not given is reported "disabled" when its
    configuration disables it, else not at all. counters: name -> count, or name -> mapping
    of counts (two levels at most), e.g. {"collected": {"Process": 12}, "dropped":
    {"outbox_full": 3}}. outbox_depth: batches waiting in the outbox.
    """
    # The compat properties change nothing, so they are not part of what is in effect.
    doc: dict[str, Json] = {
        name: value for name, value in config.to_twin().items() if FIELDS[name].section != "Compat"
    }
    names = sorted(invalid_reasons)
    doc["latest_state"] = LATEST_FAILED if names else LATEST_SUCCESS
    doc["latest_invalid_fields"] = list(_capped(names))
    doc["latest_invalid_reasons"] = list(
        _capped([f"{name}: {invalid_reasons[name]}"[:MAX_REASON_CHARS] for name in names])
    )
    states: dict[str, Json] = {}
    for name in COLLECTORS:
        if name in collectors:
            states[name] = collectors[name].to_json()
        elif config.collector(name).disabled:
            states[name] = CollectorState.disabled().to_json()
    for name, state in collectors.items():
        if name not in COLLECTORS:
            states[reported_key(name)] = state.to_json()
    doc["collectors"] = states
    doc["counters"] = _counters(counters)
    doc["agent_version"] = agent_version
    if isinstance(outbox_depth, bool) or not isinstance(outbox_depth, int) or outbox_depth < 0:
        raise TypeError(f"outbox_depth is a count, not {outbox_depth!r}")
    doc["outbox_depth"] = outbox_depth
    return doc


def _same(a: object, b: object) -> bool:
    """JSON equality: true is not 1 and 1 is not 1.0 (Python's == says they are)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def merge_patch_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: changed and added keys,
    nested objects diffed, removed keys as null. `new` holds no nulls (a null would mean
    "remove" in a patch); a null in `new` is treated as the key being absent."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if value is None:
            continue
        if key not in old or old[key] is None:
            patch[key] = copy.deepcopy(value)
            continue
        before = old[key]
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch_diff(before, value)
            if sub:
                patch[key] = sub
        elif not _same(before, value):
            patch[key] = copy.deepcopy(value)
    for key in old:
        if old[key] is not None and new.get(key) is None:
            patch[key] = None
    return patch


def apply_merge_patch(doc: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """What the hub does with a reported patch (RFC 7386), for tests and for keeping the
    last sent document."""
    out = copy.deepcopy(dict(doc))
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping):
            base = out.get(key)
            out[key] = apply_merge_patch(base if isinstance(base, Mapping) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class ReportedState:
    """The reported document the hub holds, as far as the agent knows, and the minimal patch
    to bring it up to date.

    `initial`: the twin's reported section from get_twin() on connect ($-keys are ignored);
    stale keys a previous run left there are then removed by the first patch. Without it
    the first patch is the whole document.
    """

    def __init__(self, initial: Mapping[str, Any] | None = None) -> None:
        self._sent: dict[str, Any] = {}
        if initial is not None:
            self.reset(initial)

    @property
    def sent(self) -> dict[str, Any]:
        return copy.deepcopy(self._sent)

    def reset(self, reported: Mapping[str, Any] | None = None) -> None:
        """Forget what was sent; `reported`: what the hub says it holds now."""
        self._sent = {
            k: copy.deepcopy(v)
            for k, v in (reported or {}).items()
            if not (isinstance(k, str) and k.startswith("$"))
        }

    def patch(self, doc: Mapping[str, Any]) -> dict[str, Any] | None:
        """The patch from what was sent to `doc`, or None when nothing changed. Does not
        record it: call mark_sent() once the hub accepted it."""
        diff = merge_patch_diff(self._sent, doc)
        return diff or None

    def mark_sent(self, patch: Mapping[str, Any]) -> None:
        self._sent = apply_merge_patch(self._sent, patch)

    def take(self, doc: Mapping[str, Any]) -> dict[str, Any] | None:
        """patch() and mark_sent() in one (when sending cannot fail or a failure resets)."""
        diff = self.patch(doc)
        if diff is not None:
            self.mark_sent(diff)
        return diff
