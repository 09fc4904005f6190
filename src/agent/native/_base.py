"""The ffi handle of agent._core, the status codes and the exceptions every wrapper shares."""

from __future__ import annotations

from typing import Optional

from agent._core import ffi, lib

__all__ = [
    "AM_EMPTY",
    "AM_OK",
    "CoreArgumentError",
    "CoreError",
    "CoreFullError",
    "CoreLimitError",
    "CoreMemoryError",
    "check",
    "cstr",
    "ffi",
    "lib",
]

AM_OK = lib.AM_OK
AM_EMPTY = lib.AM_EMPTY


class CoreError(Exception):
    """A C entry point returned an error status."""


class CoreArgumentError(CoreError, ValueError):
    """An argument or option the core rejected."""


class CoreMemoryError(CoreError, MemoryError):
    """The core could not allocate."""


class CoreFullError(CoreError):
    """A capped buffer has no room for the item."""


class CoreLimitError(CoreError):
    """A configured bound would be exceeded."""


_ERRORS: dict[int, type[CoreError]] = {
    lib.AM_ERR_ARG: CoreArgumentError,
    lib.AM_ERR_NOMEM: CoreMemoryError,
    lib.AM_ERR_FULL: CoreFullError,
    lib.AM_ERR_LIMIT: CoreLimitError,
}


def check(status: int, what: str) -> int:
    if status < 0:
        raise _ERRORS.get(status, CoreError)(f"{what}: core status {status}")
    return status


def cstr(ptr: object) -> Optional[str]:
    return None if ptr == ffi.NULL else ffi.string(ptr).decode("ascii")
