"""The heap's thresholds (native/heap.c): `micro-agent run` fixes them before its threads start,
so that a freed block of 128 KiB or more leaves the agent's RSS. Each check runs in a fresh
interpreter: the thresholds are process-wide, and glibc's dynamic threshold depends on what
the process freed before."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from agent.native.heap import THRESHOLD_BYTES, return_freed_memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                           reason="the thresholds are glibc's (musl has no mallopt)")

# Frees a 1 MiB mmap'd block (glibc then raises its thresholds past it, unless they were
# fixed), allocates 200 KiB, frees it, and prints how many bytes the process still holds from
# the system for it (mallinfo2: the heap's arena and the mapped blocks, after against before).
PROBE = r"""
import ctypes
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
def held():
    info = libc.mallinfo2()
    return info.arena + info.hblkhd
def probe():
    libc.free(libc.malloc(1 << 20))
    before = held()
    block = libc.malloc(200 << 10)
    ctypes.memset(block, 1, 200 << 10)
    libc.free(block)
    print("kept", max(0, held() - before) >> 10, "KiB", flush=True)
"""


def run_probe(code: str, *args: str) -> str:
    return subprocess.run([sys.executable, "-c", PROBE + code, *args], check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()


@glibc
def test_the_call_applies_and_a_freed_large_block_is_given_back() -> None:
    assert THRESHOLD_BYTES == 128 << 10
    # Without the call, glibc's raised threshold serves the 200 KiB from the heap, and keeps it
    # once freed (most of it: the heap's top may have had some room already).
    kept = run_probe("probe()").split()
    assert kept[0] == "kept" and int(kept[1]) >= 128
    applied = run_probe("from agent.native.heap import return_freed_memory\n"
                        "print(return_freed_memory())\nprobe()")
    assert applied.splitlines() == ["True", "kept 0 KiB"]


@glibc
def test_micro_agent_run_calls_it_before_its_loop(tmp_path: Path) -> None:
    """`micro-agent run` as far as its loop (Agent.run replaced by the probe): the thresholds
    are fixed by then."""
    config = tmp_path / "config.json"
    config.write_text("{}")
    at_the_loop = ("import agent.pipeline\n"
                   "agent.pipeline.Agent.run = lambda self: probe() or 0\n"
                   "from agent.cli import main\n"
                   "sys.exit(main(sys.argv[1:]))\n")
    out = run_probe("import sys\n" + at_the_loop, "run", "--data-dir", str(tmp_path / "data"),
                    "--config", str(config), "--log-level", "warning")
    assert out.splitlines()[-1] == "kept 0 KiB"


def test_the_return_says_whether_it_applied() -> None:
    assert return_freed_memory() is (platform.libc_ver()[0] == "glibc")
