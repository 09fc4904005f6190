"""cffi builder for agent._core: cdefs core.h between its CDEF markers and compiles native/*.c.

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


def _cdef_text() -> str:
    header = (NATIVE / "core.h").read_text()
    match = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", header, re.S)
    if match is None:
        raise RuntimeError("native/core.h lacks its CDEF-BEGIN/CDEF-END markers")
    return match.group(1)


def _sources() -> list[str]:
    # Relative paths keep absolute build paths out of the wheel's debug info.
    return sorted(os.path.relpath(p) for p in NATIVE.glob("*.c"))


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "agent._core",
    '#include "core.h"\n',
    sources=_sources(),
    include_dirs=[os.path.relpath(NATIVE)],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
                        "-D_GNU_SOURCE", "-fvisibility=hidden"]
    + shlex.split(os.environ.get("AGENT_CORE_CFLAGS", "")),
    extra_link_args=shlex.split(os.environ.get("AGENT_CORE_LDFLAGS", "")),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
