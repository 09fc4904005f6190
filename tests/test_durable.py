"""agent.durable: a file is replaced whole or not at all; a failed write leaves no tmp file and
the old file untouched; a reader never sees half a file, nor does the next start after a
SIGKILL."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.durable import fsync_dir, replace_file


def test_replace_writes_the_data_with_mode_0600_and_leaves_no_tmp(tmp_path: Path) -> None:
    final = tmp_path / "agent-id"
    replace_file(final, b"one\n")
    assert final.read_bytes() == b"one\n"
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    replace_file(final, b"two\n", sync=False)
    replace_file(final, b"", tmp=tmp_path / "elsewhere.tmp")
    assert final.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent-id"]
    fsync_dir(tmp_path)


def test_parts_are_written_in_order_past_iov_max_and_short_writes(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    """Parts go out with writev: more parts than one call takes (IOV_MAX), empty parts, and a
    kernel that writes less than asked (resumed mid-part) still give the bytes in order."""
    parts = [bytes([n % 256]) * (n % 7) for n in range(3000)] + [bytearray(b"tail")]
    final = tmp_path / "parts"
    replace_file(final, parts)
    assert final.read_bytes() == b"".join(parts)
    real = os.writev
    calls: list[int] = []

    def short(fd: int, buffers: list[memoryview]) -> int:
        calls.append(len(buffers))
        return real(fd, [bytes(b"".join(buffers))[:5]])  # at most 5 bytes a call

    monkeypatch.setattr(os, "writev", short)
    replace_file(final, [b"abc", memoryview(b"defghij"), b"", b"k" * 11])
    assert final.read_bytes() == b"abcdefghij" + b"k" * 11
    assert len(calls) == 5


def test_a_failed_rename_removes_the_tmp_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    final = tmp_path / "busy"
    final.mkdir()
    (final / "inside").write_bytes(b"keep")  # a file cannot be renamed over a directory
    with pytest.raises(IsADirectoryError):
        replace_file(final, b"new")
    assert (final / "inside").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_a_failed_open_raises_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        replace_file(tmp_path / "no-such-dir" / "file", b"x")
    assert list(tmp_path.iterdir()) == []


def test_a_reader_sees_only_whole_files(tmp_path: Path) -> None:
    final = tmp_path / "status.json"
    versions = [bytes([65 + i]) * (50_000 + i * 977) for i in range(5)]
    replace_file(final, versions[0], sync=False)
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(final.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(300):
            replace_file(final, versions[n % len(versions)], sync=n % 2 == 0)
    finally:
        stop.set()
        reader.join()
    assert seen and seen <= set(versions)


WRITER = """
import sys
from pathlib import Path
from agent.durable import replace_file
final = Path(sys.argv[1])
print("ready", flush=True)
n = 0
while True:
    n += 1
    replace_file(final, str(n).encode() * (1000 + n % 5000))
"""


def test_after_sigkill_the_file_is_one_whole_version(tmp_path: Path) -> None:
    final = tmp_path / "state"
    rng = random.Random(3)
    last = 0
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(final)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.01, 0.1))
        proc.kill()
        proc.wait()
        if not final.exists():
            continue
        data = final.read_text()
        # Version n is str(n) repeated 1000 + n % 5000 times: exactly one of them, whole.
        matches = [n for n in range(1, 100_000) if str(n) * (1000 + n % 5000) == data]
        assert len(matches) == 1, data[:40]
        last = matches[0]
    assert last > 0
