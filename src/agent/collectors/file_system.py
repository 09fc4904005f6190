"""FileSystem: files and directories created, modified, chmod-ed, moved and deleted under
FileSystem_Paths (the core's inotify source, docs/sources/inotify.md), with the process that
did it where the agent has audit.

With audit (owner, or beside auditd), the audit source installs watch rules for the same
paths and every batch it reads also comes here: the core learns which process opened or
changed each path, and the `fs` events wait up to JOIN_MS for it (pid, exe, uid, auid). Without
audit they carry `actor: "unavailable"` at once.

A patch of FileSystem_Paths restarts the collector, which keeps its inotify handle across the
restart: only the watches of the paths that changed are added or removed.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, ClassVar

from agent.collectors.audit_source import audit_source
from agent.collectors.base import Collector, Lane
from agent.config import CollectorState, FileSystemConfig
from agent.native.inotify import Inotify, InotifyOptions
from agent.native.sink import EventSink, pump
from agent.record import record

# How long an event waits for the audit records of its path (kauditd sends them from its own
# thread, a little after the change).
JOIN_MS = 300
# A handle kept by stop() is taken up by the start() of the same restart (a patch), at once;
# one found older than this (or after a disable) is closed and a new one made.
KEEP_S = 5.0


@record
class _Kept:
    source: Inotify
    recursive: bool
    joined: bool
    since: float


class FileSystemCollector(Collector):
    name = "FileSystem"
    kind = "file_system"
    accept = ("fs",)
    uses_audit: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source: Inotify | None = None
        self.raw = EventSink()
        self.joined = False  # events wait for their audit actor
        self._kept: _Kept | None = None
        self._closed_drops: Counter[str] = Counter()
        self._base_reason = ""
        self._limits_seen = (0, 0, 0)

    def _settings(self) -> FileSystemConfig:
        assert self.config is not None
        section = self.config.file_system
        assert isinstance(section, FileSystemConfig)
        return section

    def start(self) -> CollectorState:
        s = self._settings()
        reasons: list[str] = []
        self.joined = False
        if s.paths:
            audit = audit_source(self.env)
            if audit.subscribe(self, watch_paths=s.paths):
                self.joined = True
            else:
                audit.unsubscribe(self)
                reasons.append(f"actor unavailable: audit: {audit.state}")
        else:
            reasons.append("no paths (FileSystem_Paths is empty)")
        try:
            self.source = self._handle(s.recursive)
        except OSError as err:
            if self.joined:
                audit_source(self.env).unsubscribe(self)
                self.joined = False
            return CollectorState.unavailable(f"inotify: {err.strerror or err}")
        self.source.set_paths(s.paths)
        self.env.watch(self.source.fileno(), self._on_readable)
        self._base_reason = "; ".join(reasons)
        self._limits_seen = (0, 0, 0)
        return CollectorState.running(self._source_name(), self._reason())

    def _handle(self, recursive: bool) -> Inotify:
        """The handle stop() kept when this start is a restart (a patch) with the same options,
        else a new one. After a disable (the state says so) the kept handle is not taken up:
        what it queued meanwhile happened while the collector was disabled."""
        kept, self._kept = self._kept, None
        if kept is not None:
            restart = self.state.state == "running" and time.monotonic() - kept.since < KEEP_S
            if restart and kept.recursive == recursive and kept.joined == self.joined:
                return kept.source
            self._close_kept(kept)
        return Inotify(InotifyOptions(recursive=recursive, join_ms=JOIN_MS if self.joined else 0))

    def _close_kept(self, kept: _Kept) -> None:
        self._closed_drops.update(self._source_drops(kept.source))
        kept.source.close()

    def _source_name(self) -> str:
        return "inotify+audit" if self.joined else "inotify"

    def _reason(self) -> str:
        """The state's reason: what the collector cannot see, from the core's counters."""
        parts = [self._base_reason] if self._base_reason else []
        if self.source is not None:
            st = self.source.stats()
            if st.roots_pending:
                parts.append(f"{st.roots_pending} path(s) not existing yet, watched from a parent")
            if st.watch_limit:
                parts.append(f"watch limit (fs.inotify.max_user_watches) reached: "
                             f"{st.watch_limit} director(ies) not watched")
            if st.watch_bound:
                parts.append(f"{st.watch_bound} director(ies) beyond max_watches not watched")
            if st.overflows:
                parts.append(f"inotify queue overflowed {st.overflows} time(s): events lost")
        return "; ".join(parts)

    def stop(self) -> None:
        if self.joined:
            audit_source(self.env).unsubscribe(self)
        source, self.source = self.source, None
        if source is not None:
            self.env.unwatch(source.fileno())
            if self.lane is not None:
                self._read(self.lane, source, force=True)
            self._kept = _Kept(source, bool(self._settings().recursive), self.joined,
                               time.monotonic())
        self.joined = False

    # -- events -----------------------------------------------------------------------------

    def route(self, batch: bytes, lane: Lane) -> None:
        """A batch of the audit source (or of inotify): the core learns the actors of the
        paths it names, the aggregator keeps the `fs` events."""
        if self.source is not None and self.joined:
            self.source.audit(batch)
        super().route(batch, lane)

    def _read(self, lane: Lane, source: Inotify, force: bool = False) -> None:
        def deliver(batches: list[bytes]) -> None:
            for batch in batches:
                Collector.route(self, batch, lane)  # inotify's own: nothing to learn

        pump(source.drain, self.raw, deliver)
        pump(lambda sink: source.release(sink, force), self.raw, deliver, seal=True)

    def _on_readable(self) -> None:
        if self.source is not None and self.lane is not None:
            if self.joined:
                # The audit records of these changes may be waiting on the audit socket.
                audit_source(self.env).on_readable(seal=True)
            self._read(self.lane, self.source)

    def tick(self, now: int, lane: Lane) -> None:
        if self.joined:
            audit_source(self.env).tick(now)
            audit_source(self.env).on_readable(seal=True)
        if self.source is None:
            return
        self._read(lane, self.source)
        st = self.source.stats()
        limits = (st.watch_limit, st.watch_bound, st.overflows)
        if limits != self._limits_seen and self.state.state == "running":
            self._limits_seen = limits
            self.state = CollectorState.running(self._source_name(), self._reason())

    def tick_interval(self) -> float:
        return 0.25 if self.joined else 1.0

    # -- counters ---------------------------------------------------------------------------

    @staticmethod
    def _source_drops(source: Inotify) -> dict[str, int]:
        s = source.stats()
        return {"inotify_overflows": s.overflows, "inotify_watch_limit": s.watch_limit,
                "inotify_watch_bound": s.watch_bound, "inotify_dropped": s.dropped,
                "inotify_malformed": s.malformed, "inotify_long_paths": s.long_paths}

    def drops(self) -> dict[str, int]:
        # Called every second by the loop, never between the stop and the start of a restart:
        # a handle still kept here was kept by a disable, and its watches go now.
        if self._kept is not None:
            kept, self._kept = self._kept, None
            self._close_kept(kept)
        total = Counter(self._closed_drops)
        if self.source is not None:
            total.update(self._source_drops(self.source))
        sink = self.raw.stats()
        total["sink_full"] = sink.dropped_full
        total["too_large"] = sink.dropped_encode
        return dict(total)

    def stats(self) -> dict[str, int]:
        out = super().stats()
        if self.source is not None:
            s = self.source.stats()
            out.update(watches=s.watches, roots_pending=s.roots_pending,
                       overflows=s.overflows, watch_limit=s.watch_limit,
                       moves_paired=s.moves_paired, scanned=s.scanned,
                       actors_matched=s.actors_matched, actors_unmatched=s.actors_unmatched)
        return out
