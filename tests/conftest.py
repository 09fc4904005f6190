"""Shared fixtures: the recorded audit logs and the two implementations of the audit parser.

`corpus_dir` is tests/fixtures/audit/: device-raw.log and device-enriched.log, recorded by
scripts/record-fixtures from a real kernel and auditd, with the events the C parser gives for
each (*.events.jsonl) and counts read from their text (counts.json). `external_corpus()`
names a larger corpus of the same layout (plus public/, other projects' test logs) when
$AGENT_CORPUS_DIR is set; tests use it in addition to the fixtures, never instead.

`audit_impl` runs a test against the C core (agent.native.AuditParser, its msgpack batches
decoded with msgpack.unpackb(raw=False)) and against the pure-Python reference
(oracle.audit_reference.ReferenceAuditParser, tests/oracle/): one behaviour, two
implementations. Both give
`parse(data, options=None, chunk=None) -> (events, stats)`, where options is a dict of
AuditOptions field names or an options object (AuditOptions, ReferenceOptions), chunk
feeds the data in slices of that many bytes (None: at once), and stats holds the counters of
docs/events.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "audit"
DEVICE_LOGS = ("device-raw.log", "device-enriched.log")

# The counters of docs/events.md, in its order.
STAT_NAMES = (
    "bytes",
    "lines",
    "records",
    "events",
    "malformed",
    "long_lines",
    "truncated",
    "forced",
    "timeouts",
    "duplicates",
    "gaps",
    "batches",
)

Event = dict[str, Any]
ParseResult = tuple[list[Event], dict[str, int]]
Parse = Callable[..., ParseResult]


Options = Union[Mapping[str, Optional[int]], Any, None]


def option_values(options: Options) -> dict[str, int]:
    """Bounds given as a mapping, an options record (AuditOptions) or the reference's options
    dataclass (ReferenceOptions); None values keep the default."""
    from agent.record import asdict as record_fields
    from agent.record import is_record

    if options is None:
        return {}
    if isinstance(options, Mapping):
        items = dict(options)
    elif is_record(options) and not isinstance(options, type):  # AuditOptions
        items = record_fields(options)
    elif is_dataclass(options) and not isinstance(options, type):  # ReferenceOptions
        items = asdict(options)
    else:
        raise TypeError(f"options must be a mapping or an options record, not {options!r}")
    return {name: int(value) for name, value in items.items() if value is not None}


def _slices(data: bytes, chunk: int | None) -> list[bytes]:
    if chunk is None:
        return [data]
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    return [data[i : i + chunk] for i in range(0, len(data), chunk)]


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    keys = [key for key, _ in pairs]
    assert len(set(keys)) == len(keys), f"a map with a key written twice: {keys}"
    return dict(pairs)


def parse_core(data: bytes, options: Options = None, chunk: int | None = None) -> ParseResult:
    """The C core: batches decoded and concatenated, in order."""
    import msgpack

    from agent.native import AuditOptions, AuditParser

    values = option_values(options)
    # The reference parser's max_batches is the core parser's sink's.
    max_batches = values.pop("max_batches", None)
    parser = AuditParser(AuditOptions(**values), max_batches=max_batches)
    batches: list[bytes] = []
    for piece in _slices(data, chunk):
        batches += parser.feed(piece)
    batches += parser.flush()
    events: list[Event] = []
    for batch in batches:
        # A key written twice would be kept once by a dict: every map is checked for it.
        decoded = msgpack.unpackb(batch, raw=False, object_pairs_hook=_unique_keys)
        assert isinstance(decoded, list), "a batch is one msgpack array"
        events += decoded
    # The parser's counters, and the batches its sink sealed.
    stats = {**dict(parser.stats()), "batches": parser.sink.stats().batches}
    return events, {name: int(stats[name]) for name in STAT_NAMES}


def parse_reference(data: bytes, options: Options = None, chunk: int | None = None) -> ParseResult:
    """The pure-Python reference parser."""
    from oracle.audit_reference import ReferenceAuditParser, ReferenceOptions

    parser = ReferenceAuditParser(ReferenceOptions(**option_values(options)))
    events: list[Event] = []
    for piece in _slices(data, chunk):
        events += parser.feed(piece)
    events += parser.flush()
    stats = parser.stats()
    return events, {name: stats[name] for name in STAT_NAMES}


IMPLEMENTATIONS: dict[str, Parse] = {"core": parse_core, "reference": parse_reference}


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The recorded audit logs of the repository (tests/fixtures/audit/)."""
    return FIXTURES


def external_corpus() -> Path | None:
    """The larger corpus named by $AGENT_CORPUS_DIR, or None when the variable is not set.

    Read at collection time (tests parametrize over its files). A variable that names no
    directory is a mistake in the caller's setup and fails the run rather than passing it
    with fewer tests."""
    configured = os.environ.get("AGENT_CORPUS_DIR")
    if not configured:
        return None
    path = Path(configured)
    if not path.is_dir():
        raise pytest.UsageError(f"AGENT_CORPUS_DIR={configured!r} is not a directory")
    return path


@pytest.fixture(scope="session", params=sorted(IMPLEMENTATIONS))
def audit_impl(request: pytest.FixtureRequest) -> Parse:
    """parse(data, options=None, chunk=None) -> (events, stats) of one implementation."""
    return IMPLEMENTATIONS[str(request.param)]


@pytest.fixture(scope="session")
def core_parse() -> Parse:
    return parse_core


@pytest.fixture(scope="session")
def reference_parse() -> Parse:
    return parse_reference


# Markers that follow from a fixture, so they cannot drift from what a test uses.
MARKS_OF_FIXTURES = {"corpus_dir": "corpus", "iothub_session": "live", "iothub2_session": "live"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in set(getattr(item, "fixturenames", ())) & MARKS_OF_FIXTURES.keys():
            item.add_marker(MARKS_OF_FIXTURES[fixture])


def skip_unless_ci(reason: str) -> None:
    """A prerequisite is missing: skip on a developer's machine, but fail in CI, where
    scripts/test installs every prerequisite and a skip would hide a missing test."""
    if os.environ.get("CI"):
        pytest.fail(f"CI lacks a prerequisite: {reason}")
    pytest.skip(reason)


# The local IoT Hub stand-in (tests/hub/README.md): session broker and hubs, reset per test.
from hub.fixtures import hub_certs, iothub, iothub2, iothub2_session, iothub_session  # noqa: F401


@pytest.fixture
def dir_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The outbox's directory fsyncs, counted on the real file system: each call's path is
    appended to the returned list, and the fsync still runs."""
    import agent.outbox as outbox_module

    synced: list[Path] = []
    real = outbox_module.fsync_dir

    def counting(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(outbox_module, "fsync_dir", counting)
    return synced
