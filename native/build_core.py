"""cffi builder for agent._core: cdefs the CDEF blocks of core.h and of every core_*.h (one per
live source, in name order) and compiles native/*.c.

Extra compiler and linker flags (a sanitizer build) come from AGENT_CORE_CFLAGS and
AGENT_CORE_LDFLAGS; the house flags (C11, -Wall -Wextra -Werror) are always on.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from cffi import FFI

NATIVE = Path(__file__).resolve().parent


def _api_headers() -> list[Path]:
    return [NATIVE / "core.h"] + sorted(NATIVE.glob("core_*.h"))


def _cdef_text() -> str:
    blocks = []
    for header in _api_headers():
        match = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", header.read_text(), re.DOTALL)
        if match is None:
            raise RuntimeError(f"native/{header.name} lacks its CDEF-BEGIN/CDEF-END markers")
        blocks.append(match.group(1))
    return "\n".join(blocks)


def _sources() -> list[str]:
    # Relative paths keep absolute build paths out of the wheel's debug info.
    return sorted(os.path.relpath(p) for p in NATIVE.glob("*.c"))


# The house flags; scripts/build-deb compiles the same sources with them for other machines.
HOUSE_CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE",
                "-fvisibility=hidden"]

ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "agent._core",
    "".join(f'#include "{header.name}"\n' for header in _api_headers()),
    sources=_sources(),
    include_dirs=[os.path.relpath(NATIVE)],
    extra_compile_args=HOUSE_CFLAGS + shlex.split(os.environ.get("AGENT_CORE_CFLAGS", "")),
    extra_link_args=shlex.split(os.environ.get("AGENT_CORE_LDFLAGS", "")),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
