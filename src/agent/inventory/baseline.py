"""Baseline: the built-in OS configuration checks (baseline_checks.CHECKS), one `baseline`
event per enabled check with its result: Pass, Fail, Skip (not applicable) or Error, and why.

`Baseline_GroupsDisabled` and `Baseline_ChecksDisabled` (twin comma lists) arrive here as
sets of group names and check ids; both compare without regard to case. A disabled check is
not run and gives no event."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from agent.inventory import Event, Snapshot, now_ms
from agent.inventory.baseline_checks import (
    CHECKS,
    ERROR,
    SKIP,
    Check,
    CheckError,
    Context,
    NotApplicable,
)

SRC = "baseline"

GROUPS = tuple(dict.fromkeys(check.group for check in CHECKS))


def _folded(values: Iterable[str]) -> set[str]:
    return {value.strip().casefold() for value in values if value.strip()}


def enabled_checks(
    groups_disabled: Iterable[str] = (), checks_disabled: Iterable[str] = ()
) -> list[Check]:
    groups = _folded(groups_disabled)
    ids = _folded(checks_disabled)
    return [c for c in CHECKS if c.group.casefold() not in groups and c.id.casefold() not in ids]


def run_check(check: Check, ctx: Context) -> tuple[str, str]:
    """A check's (result, reason): a check never raises; what stops it is its Error."""
    try:
        return check.run(ctx)
    except NotApplicable as exc:
        return SKIP, str(exc)
    except CheckError as exc:
        return ERROR, str(exc)
    except (OSError, ValueError, UnicodeError) as exc:
        return ERROR, f"{type(exc).__name__}: {exc}"


def gather(
    root: Path = Path("/"),
    groups_disabled: Iterable[str] = (),
    checks_disabled: Iterable[str] = (),
) -> Snapshot:
    """A `baseline` event per enabled check. A disabled group or id that names no check is
    recorded in errors (a typo in the twin should be visible), the others still run."""
    snap = Snapshot()
    groups_disabled = list(groups_disabled)
    checks_disabled = list(checks_disabled)
    known_groups = {g.casefold() for g in GROUPS}
    known_ids = {c.id.casefold() for c in CHECKS}
    for name in _folded(groups_disabled) - known_groups:
        snap.error("Baseline_GroupsDisabled", f"no check group {name!r}")
    for name in _folded(checks_disabled) - known_ids:
        snap.error("Baseline_ChecksDisabled", f"no check {name!r}")
    ts = now_ms()
    ctx = Context(root)
    for check in enabled_checks(groups_disabled, checks_disabled):
        res, why = run_check(check, ctx)
        event: Event = {
            "t": "baseline",
            "ts": ts,
            "src": SRC,
            "id": check.id,
            "group": check.group,
            "sev": check.sev,
            "desc": check.desc,
            "fix": check.fix,
            "res": res,
            "why": why,
        }
        snap.events.append(event)
    return snap
