"""The kernel audit state as the agent found it, kept in the data directory until it is put back.

Before the audit source changes anything in the kernel (ownership, enabled, backlog_limit,
backlog_wait_time, rules) it writes what it found to DATA/audit-state.json, durably (temp,
fsync, rename). A clean stop restores it and removes the file; after a kill -9 the file stays,
and the next start (before it changes anything again) or `micro-agent audit-restore` puts the
state back and removes it. The file is removed only after a restore that left nothing
different, so a kill at any point leaves either the file or the state it describes.

A record written during an earlier boot describes a kernel state that died with that boot: it
is discarded, not restored. See docs/sources/audit-netlink.md ("Crash safety").
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from agent.clock import wall_time
from agent.durable import fsync_dir, replace_file
from agent.native._base import CoreStats
from agent.native.audit_netlink import STATUS_FIELDS, restore_status
from agent.record import record

log = logging.getLogger("agent.audit")

RECORD_NAME = "audit-state.json"
FORMAT = 1
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# Tests only: "record" makes the process kill itself with SIGKILL right after the record is
# written (a number N is read by the C source: after its Nth AUDIT_SET).
KILL_AFTER_ENV = "AM_ANL_KILL_AFTER"


class RecordError(Exception):
    """The record cannot be read or is not one of ours (it is kept)."""


@record(frozen=True)
class Outcome:
    """What restore() did: `ok` when nothing recorded is left to put back (the record is gone),
    `what` one line for the log and the verb; `reached` False when the kernel did not answer
    (no audit, or no CAP_AUDIT_CONTROL)."""

    ok: bool
    what: str
    reached: bool = True


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


class AuditStateRecord:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / RECORD_NAME

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, found: CoreStats) -> None:
        """The status found, before anything changes; durable when this returns."""
        doc = {
            "format": FORMAT,
            "boot_id": boot_id(),
            "agent_pid": os.getpid(),
            "written": int(wall_time()),
            "status": {name: found[name] for name in STATUS_FIELDS},
        }
        replace_file(self.path, (json.dumps(doc, sort_keys=True) + "\n").encode())
        if os.environ.get(KILL_AFTER_ENV) == "record":
            os.kill(os.getpid(), 9)

    def load(self) -> dict[str, object]:
        try:
            doc = json.loads(self.path.read_text())
            status = doc["status"]
            if doc.get("format") != FORMAT or not all(
                    isinstance(status.get(name), int) for name in STATUS_FIELDS):
                raise ValueError("not a record of this agent's format")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise RecordError(f"{self.path}: {err}") from err
        return dict(doc)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        fsync_dir(self.path.parent)

    def restore(self) -> Outcome:
        """Puts the recorded state back and removes the record when that succeeded. Nothing
        recorded: ok. RecordError when the record is unreadable (kept)."""
        if not self.exists():
            return Outcome(True, "nothing recorded")
        doc = self.load()
        recorded_boot = doc.get("boot_id")
        if recorded_boot and recorded_boot != boot_id():
            self.remove()
            return Outcome(True, "record of an earlier boot discarded (the kernel started afresh)")
        status = doc["status"]
        assert isinstance(status, dict)
        result = restore_status(status)
        if not result.complete:
            return Outcome(False, f"audit state not restored: {result.describe()}; the record "
                           f"{self.path} is kept", result.answered)
        self.remove()
        return Outcome(True, f"audit state restored (recorded by pid {doc.get('agent_pid')}): "
                       f"{result.describe()}")
