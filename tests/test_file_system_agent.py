"""The FileSystem collector in the agent (agent.pipeline over the real kernel): paths from the
twin, the events of real changes with the process that made them (audit watch rules), a live
patch of the paths, FileSystem_Disabled and FileSystem_MessageFrequency live.

The harness is tests/test_runtime.py's: an Agent in this process over a temporary data
directory, its loop turned while the test changes files, what it delivered decoded."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_runtime import agent, delivered, events_of

pytestmark = [pytest.mark.live, pytest.mark.root]

QUIET = {"Process_Disabled": True}


def fs_events(data: Path, under: Path) -> list[dict[str, Any]]:
    return [e for e in events_of(data) if e["t"] == "fs" and str(e.get("path", "")).startswith(
        str(under))]


def by_op_path(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["op"], e["path"]): e for e in events}


def test_twin_paths_give_each_change_with_the_process_that_made_it(tmp_path: Path) -> None:
    root = tmp_path / "watched"
    root.mkdir()
    pids: dict[str, int] = {}

    def run(name: str, argv: list[str]) -> None:
        proc = subprocess.Popen(argv)
        assert proc.wait() == 0
        pids[name] = proc.pid
        # One change of a path at a time: the actor of an event is the last process the audit
        # saw doing that to the path before the event was read (docs/sources/inotify.md).
        time.sleep(0.4)

    with agent(tmp_path, {**QUIET, "FileSystem_Paths": str(root)}) as h:
        c = h.agent.collectors["FileSystem"].collector
        assert c.state.state == "running" and c.state.source == "inotify+audit", c.state

        def work() -> None:
            run("touch", ["touch", str(root / "a")])
            run("cp", ["cp", "/etc/hostname", str(root / "a")])
            run("chmod", ["chmod", "600", str(root / "a")])
            run("mv", ["mv", str(root / "a"), str(root / "b")])
            run("mkdir", ["mkdir", str(root / "d")])
            run("mkdir -p", ["mkdir", "-p", str(root / "d/e/f")])
            run("sh", ["sh", "-c", f"echo x > {root}/d/e/f/g"])
            run("rm", ["rm", str(root / "b")])
            run("rm -r", ["rm", "-r", str(root / "d")])

        h.run_while(work)
    events = by_op_path(fs_events(h.data, root))
    a, b, g = str(root / "a"), str(root / "b"), str(root / "d/e/f/g")
    expected = {("create", a): ("touch", "/usr/bin/touch"),
                ("modify", a): ("cp", "/usr/bin/cp"),
                ("attrib", a): ("touch", "/usr/bin/touch"),  # the first attrib: touch's
                ("move", b): ("mv", "/usr/bin/mv"),
                ("create", str(root / "d")): ("mkdir", "/usr/bin/mkdir"),
                ("delete", b): ("rm", "/usr/bin/rm")}
    for key, (name, exe) in expected.items():
        assert key in events, (key, sorted(events))
        event = events[key]
        assert event["actor"] == "audit", event
        assert (event["pid"], event["exe"]) == (pids[name], exe), (key, event)
        assert event["uid"] == 0
    assert events[("move", b)]["from"] == a
    assert ("create", g) in events  # in a directory made after the start, recursively
    assert ("delete", g) in events


def test_a_live_paths_patch_changes_only_the_watches_concerned(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "sub").mkdir(parents=True)
    token = uuid.uuid4().hex
    with agent(tmp_path, {**QUIET, "FileSystem_Paths": str(a)}) as h:
        c = h.agent.collectors["FileSystem"].collector
        source = c.source  # type: ignore[attr-defined]
        before = source.stats()
        h.patch({"FileSystem_Paths": f"{a},{b}"})
        assert c.source is source  # type: ignore[attr-defined]  # the same handle: no re-watch
        after = source.stats()
        assert after.watches_added - before.watches_added == 2  # b, b/sub
        assert after.watches_removed == before.watches_removed
        h.run_while(lambda: (b / "sub" / token).write_bytes(b""))
        h.patch({"FileSystem_Paths": str(b)})
        assert source.stats().watches_removed - after.watches_removed == 2  # a, a/sub
        h.run_while(lambda: [(a / f"gone-{token}").write_bytes(b""),
                             (b / f"kept-{token}").write_bytes(b"")])
    paths = {e["path"] for e in fs_events(h.data, tmp_path)}
    assert str(b / "sub" / token) in paths and str(b / f"kept-{token}") in paths
    assert str(a / f"gone-{token}") not in paths


def test_disabled_and_message_frequency_follow_the_twin_live(tmp_path: Path) -> None:
    root = tmp_path / "watched"
    root.mkdir()
    before, during, after = (f"{n}-{uuid.uuid4().hex}" for n in ("before", "during", "after"))
    with agent(tmp_path, {**QUIET, "FileSystem_Paths": str(root)}) as h:
        h.run_while(lambda: (root / before).write_bytes(b""))
        h.patch({"FileSystem_Disabled": True})
        assert h.agent.collectors["FileSystem"].collector.state.state == "disabled"
        h.run_while(lambda: (root / during).write_bytes(b""))
        h.patch({"FileSystem_Disabled": False, "FileSystem_MessageFrequency": "High"})
        assert h.agent.collectors["FileSystem"].collector.state.state == "running"
        h.run_while(lambda: (root / after).write_bytes(b""))
    envelopes = delivered(h.data)
    prio_of = {e["path"]: env["prio"] for env in envelopes for e in env["events"]
               if e["t"] == "fs" and e["op"] == "create"}
    assert prio_of.get(str(root / before)) == "Low"
    assert str(root / during) not in prio_of
    assert prio_of.get(str(root / after)) == "High"
