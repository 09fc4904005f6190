"""The repository stands on its own: no tracked file names a path outside it.

A fresh clone has nothing beside it, so a file that names a path beside the repository sends
its reader, or a test, to a file they do not have. Only .ci/run may look there (it hands a
larger corpus to
the tests through AGENT_CORPUS_DIR when one sits beside the repository).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {".ci/run"}
# Spelled in two pieces so that this file does not name them: the folder beside the
# repository, and the workplace the repository was developed in (its shared lock file, its
# scratch trees), which no user of the repository has.
OUTSIDE = "../" + "shared"
WORKPLACE = "/" + "work/"


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout
    return [name for name in out.decode().split("\0") if name]


def test_the_walk_sees_the_repository() -> None:
    files = tracked_files()
    assert "README.md" in files and "tests/conftest.py" in files
    assert ".ci/run" in files


def test_no_tracked_file_names_a_path_outside_the_repository() -> None:
    naming = []
    for name in tracked_files():
        if name in ALLOWED:
            continue
        path = REPO / name
        if not path.is_file():
            continue  # deleted in the work tree, not yet committed
        text = path.read_bytes()
        if OUTSIDE.encode() in text or WORKPLACE.encode() in text:
            naming.append(name)
    assert naming == [], f"these files name {OUTSIDE} or {WORKPLACE}: {naming}"


def test_the_one_allowed_file_is_the_ci_entry_point() -> None:
    """.ci/run is the only exception, and it uses it for the corpus (a check that the
    exception still has a reason to exist)."""
    assert OUTSIDE.encode() in (REPO / ".ci" / "run").read_bytes()
