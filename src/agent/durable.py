"""Replacing a file so that a reader, or the next start after a crash, sees either the old
file or the whole new one: write a temporary file, fsync it, rename it over the final name,
fsync the directory. The outbox's batch and state files, the local delivery directory and the
agent's small state files (agent-id, status.json, login-state.json) all write through here.

`sync=False` keeps the rename (a reader never sees half a file) but skips both fsyncs: for a
file rewritten every few seconds whose loss in a power cut costs nothing (status.json).

The data may be given in parts (a sequence of buffers), written one after the other with
writev: a checkpoint or a batch file is a small frame around batches the caller holds already,
and joining them first would copy hundreds of KiB into a fresh buffer each time, faulted in
page by page (the agent's heap maps blocks of 128 KiB or more afresh: agent.native.heap).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

# An alias is evaluated at import: Union, not `|` (Python 3.9).
Buffer = Union[bytes, bytearray, memoryview]
# writev takes at most IOV_MAX buffers per call (1024 on Linux).
_IOV_MAX = 1024


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename, an unlink) survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: Buffer | Sequence[Buffer]) -> None:
    """Every byte of data (one buffer, or parts written in order) to fd, short writes resumed."""
    given = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    parts = [memoryview(p).cast("B") for p in given if len(p)]
    while parts:
        written = os.writev(fd, parts[:_IOV_MAX])
        while written:
            if written >= parts[0].nbytes:
                written -= parts.pop(0).nbytes
            else:
                parts[0] = parts[0][written:]
                written = 0


def replace_file(final: Path | str, data: Buffer | Sequence[Buffer], *,
                 tmp: Path | str | None = None,
                 sync: bool = True, mode: int = 0o600, sync_dir: bool = True) -> None:
    """Write data (or its parts, in order) to `tmp` (default: final's name plus ".tmp",
    beside it), fsync it, rename it over `final`, fsync final's directory. `tmp` must be on
    final's file system. On a failure before the rename the tmp file is removed and the error
    raised: final is untouched. A failure of the directory's fsync is raised too; final holds
    the new data then, but a power cut may still undo the rename. `sync_dir=False` leaves the
    directory's fsync to the caller (the outbox does one for many files, before anything
    depends on them)."""
    if tmp is None:
        tmp = f"{final}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            write_all(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync and sync_dir:
        fsync_dir(Path(final).parent)
