"""Login: logins, logouts and failed logins from wtmp and btmp (the core's utmp reader,
followed from a remembered offset across restarts, truncation and rotation) and, with
Login_UsePAM, PAM's records from the audit socket (USER_LOGIN, USER_AUTH, USER_START, ...:
`auth` events).

The first start of the agent on a device does not report the history the files already hold:
it is read to its end and counted in `history_skipped`. From then on the offsets are kept in
DATA_DIR/login-state.json, so that a restart neither repeats nor misses a record.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from agent.collectors.audit_source import audit_source
from agent.collectors.base import Collector, Lane
from agent.collectors.privileges import explain_refusal
from agent.config import CollectorState, LoginConfig
from agent.durable import replace_file
from agent.native.sink import EventSink, pump
from agent.native.utmp import UtmpReader

log = logging.getLogger("agent.collectors")

FILES = {"wtmp": "/var/log/wtmp", "btmp": "/var/log/btmp"}
WHAT = {"wtmp": "logins and logouts", "btmp": "failed logins"}
STATE_FILE = "login-state.json"


class LoginCollector(Collector):
    name = "Login"
    accept = ("login", "auth")
    uses_audit: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.readers: dict[str, UtmpReader] = {}
        self.raw = EventSink()
        self.pam = False
        self._closed_drops: Counter[str] = Counter()
        self._saved: dict[str, Any] = {}
        # The offsets read so far, kept at stop(): a restart in the same process (a Login_*
        # patch) goes on from them, not from the file, whose last save may have failed (a
        # full or read-only data directory) and would make it read records a second time.
        self._held: dict[str, Any] | None = None

    def _state_path(self) -> Path:
        return self.env.data_dir / STATE_FILE

    def _load_state(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self._state_path().read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.warning("Login: %s is unreadable (%s): starting at the ends of the files",
                        self._state_path(), err)
            self.counters["state_lost"] += 1
            return None
        return doc if isinstance(doc, dict) else None

    def _save_state(self) -> None:
        doc = {kind: r.state().to_dict() for kind, r in self.readers.items()}
        if doc == self._saved:
            return
        path = self._state_path()
        try:
            replace_file(path, json.dumps(doc).encode(), tmp=path.with_suffix(".tmp"))
            self._saved = doc
        except OSError as err:
            self.counters["state_errors"] += 1
            log.warning("Login: cannot save %s: %s", self._state_path(), err)

    def start(self) -> CollectorState:
        assert self.config is not None
        section = self.config.login
        assert isinstance(section, LoginConfig)
        saved = self._held if self._held is not None else self._load_state()
        for kind, path in FILES.items():
            reader = UtmpReader(str(self.env.root / path.lstrip("/")), kind)
            state = (saved or {}).get(kind)
            if state is not None:
                try:
                    reader.restore(state)
                except (ValueError, TypeError, KeyError) as err:
                    log.warning("Login: the saved %s offset is unusable (%s): from the end", kind, err)
                    state = None
            if state is None:
                self._skip_history(reader)
            self.readers[kind] = reader
        self._save_state()
        sources = ["utmp"]
        reasons = self._unreadable()
        self.pam = section.use_pam
        if self.pam:
            audit = audit_source(self.env)
            if audit.subscribe(self):
                sources.append("audit")
            reasons.append(f"audit: {audit.state}")
        return CollectorState.running("+".join(sources), "; ".join(reasons))

    def _unreadable(self) -> list[str]:
        """The files that exist but cannot be read (btmp is 0660 root:utmp: without
        CAP_DAC_READ_SEARCH failed logins are not seen); the reader counts the failures in
        utmp_io_errors at each read, this says why once."""
        out = []
        for kind, path in FILES.items():
            try:
                with open(self.env.root / path.lstrip("/"), "rb"):
                    pass
            except FileNotFoundError:
                continue
            except OSError as err:
                out.append(f"{WHAT[kind]} unavailable: "
                           + explain_refusal(f"{path}: {err.strerror}", err.errno))
        return out

    def _skip_history(self, reader: UtmpReader) -> None:
        throwaway = EventSink()
        self.counters["history_skipped"] += pump(reader.read, throwaway, _discard, seal=True)

    def stop(self) -> None:
        if self.pam:
            audit_source(self.env).unsubscribe(self)
            self.pam = False
        if self.lane is not None:
            self._read(self.lane)
        self._save_state()
        self._held = {kind: r.state().to_dict() for kind, r in self.readers.items()} or None
        for reader in self.readers.values():
            self._closed_drops.update(self._reader_drops(reader))
            reader.close()
        self.readers = {}

    def _read(self, lane: Lane) -> None:
        def deliver(batches: list[bytes]) -> None:
            for batch in batches:
                self.route(batch, lane)

        for reader in self.readers.values():
            pump(reader.read, self.raw, deliver)
        deliver(self.raw.seal())

    def tick(self, now: int, lane: Lane) -> None:
        if self.pam:
            audit_source(self.env).tick(now)
        self._read(lane)
        self._save_state()

    @staticmethod
    def _reader_drops(reader: UtmpReader) -> Counter[str]:
        s = reader.stats()
        return Counter({"utmp_malformed": s.malformed, "utmp_dropped": s.dropped,
                        "utmp_io_errors": s.io_errors})

    def drops(self) -> dict[str, int]:
        total = Counter(self._closed_drops)
        for reader in self.readers.values():
            total.update(self._reader_drops(reader))
        return dict(total)


def read_history(root: Path, lane: Lane) -> None:
    """Every record of wtmp and btmp from their start (`micro-agent collect Login`)."""
    for kind, path in FILES.items():
        with UtmpReader(str(root / path.lstrip("/")), kind) as reader:
            pump(reader.read, lane.sink, lane.spill)


def _discard(batches: list[bytes]) -> None:
    """The history skipped at the first start."""
