"""The ffi handle of agent._core, the status codes, the exceptions every wrapper shares, and
the one protocol every wrapper follows:

- NativeHandle: one C handle under ffi.gc (its C destructor runs once: at close() or when the
  wrapper is collected), an idempotent close(), a context manager, and CoreClosedError from
  every call on a closed handle;
- c_options: an options record (agent.record) -> its C struct, each value range-checked
  against the C field's own type;
- CoreStats: a C stats struct -> a read-only mapping of its own fields (nothing to mirror by
  hand, so no C field can be left out);
- the drain contract: a source's read/drain/scan call writes events into an EventSink and
  returns `more` (True: the sink filled or a per-call bound was reached; take the batches and
  call again); native.pump runs that loop for every collector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typing_extensions costs 0.3 MB RSS at run time for an annotation
    from typing_extensions import Self

from agent._core import ffi, lib
from agent.record import fields

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


class CoreClosedError(CoreError):
    """A call on a handle after its close()."""


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


def more(status: int, what: str, limit: bool = False) -> bool:
    """The drain contract's answer from a C status: True when the sink is full (AM_ERR_FULL)
    or, with limit=True, when a per-call bound was reached (AM_ERR_LIMIT): take the sink's
    batches and call again. False when the call completed; errors raise."""
    if status == lib.AM_ERR_FULL or (limit and status == lib.AM_ERR_LIMIT):
        return True
    check(status, what)
    return False


def cstr(ptr: object) -> str | None:
    return None if ptr == ffi.NULL else ffi.string(ptr).decode("ascii")


# ---------------------------------------------------------------------------------------------
# one lifecycle



class NativeHandle:
    """Owns one C handle: `destructor` runs exactly once, at close() or at garbage collection
    (ffi.gc), whichever comes first. Every call goes through `_live()`, which raises
    CoreClosedError once the handle is closed."""

    _what = "handle"  # named in the closed error
    _h: Any = None

    def _own(self, handle: Any, destructor: Callable[[Any], None], options: object = None) -> None:
        """Takes ownership of a fresh handle. NULL: the core refused `options` (given) or
        could not allocate (options None)."""
        if handle == ffi.NULL:
            if options is not None:
                raise CoreArgumentError(f"the core rejected the {self._what} options {options}")
            raise CoreMemoryError(f"the core could not make the {self._what}")
        self._h = ffi.gc(handle, destructor)

    def _make(self, new: Callable[[Any], Any], free: Callable[[Any], None], options: Any,
              struct: str, defaults: Callable[[Any], None]) -> Any:
        """The one way a wrapper makes its handle from an options record: `new` called with
        the C options (c_options), its result owned with `free`; returns the C options."""
        opts = c_options(options, struct, defaults)
        self._own(new(opts), free, options)
        return opts

    def _live(self) -> Any:
        if self._h is None:
            raise CoreClosedError(f"the {self._what} is closed")
        return self._h

    def _read_stats(self, struct: str, fill: Callable[[Any, Any], object]) -> CoreStats:
        """The counters of C `struct`, from its stats call `fill(handle, out)`."""
        return CoreStats.read(struct, self._fill_stats(struct, fill))

    def _read_fields(self, struct: str, fill: Callable[[Any, Any], object],
                     names: tuple[str, ...]) -> tuple[int, ...]:
        """Only `names` of C `struct`: for a check run every second that needs a few counters
        (CoreStats copies every field)."""
        raw = self._fill_stats(struct, fill)
        return tuple(int(getattr(raw, name)) for name in names)

    def _fill_stats(self, struct: str, fill: Callable[[Any, Any], object]) -> Any:
        """This handle's `struct *` buffer (made once), filled by `fill(handle, out)`."""
        handle = self._live()
        buffers: dict[str, Any] = self.__dict__.setdefault("_stats_buffers", {})
        raw = buffers.get(struct)
        if raw is None:
            raw = buffers[struct] = ffi.new(f"{struct} *")
        fill(handle, raw)
        return raw

    @property
    def closed(self) -> bool:
        return self._h is None

    def close(self) -> None:
        """Runs the C destructor now; later calls do nothing."""
        handle, self._h = self._h, None
        if handle is not None:
            ffi.release(handle)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# declarative options

# Field metadata of an options field that has no C field of its own name (the wrapper uses it).
C_ONLY_IN_PYTHON = {"c": False}

_INTEGER_RANGES: dict[str, tuple[int, int]] = {}


def _range(ctype: Any) -> tuple[int, int]:
    name = str(ctype.cname)
    if name not in _INTEGER_RANGES:
        bits = 8 * ffi.sizeof(ctype)
        if name == "_Bool":
            _INTEGER_RANGES[name] = (0, 1)
        elif name.startswith(("u", "unsigned")):
            _INTEGER_RANGES[name] = (0, (1 << bits) - 1)
        else:
            _INTEGER_RANGES[name] = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return _INTEGER_RANGES[name]


def c_options(options: Any, struct: str, defaults: Callable[[Any], None]) -> Any:
    """A new `struct` filled with the core's defaults (`defaults`, the am_*_default_options
    call) and then with every field of the `options` record that is not None. Each value is
    checked against its C field's type (uint32_t: 0..2**32-1; bool values are 0 or 1).
    Fields marked C_ONLY_IN_PYTHON are left to the wrapper."""
    raw = ffi.new(f"{struct} *")
    defaults(raw)
    if options is None:
        return raw
    c_fields = dict(ffi.typeof(struct).fields)
    for f in fields(options):
        if f.metadata.get("c", True) is False:
            continue
        value = getattr(options, f.name)
        if value is None:
            continue
        if f.name not in c_fields:
            raise TypeError(f"{type(options).__name__}.{f.name} has no field in {struct}")
        number = int(value)
        low, high = _range(c_fields[f.name].type)
        if not low <= number <= high:
            raise CoreArgumentError(f"{f.name}={value} is out of range ({low}..{high})")
        setattr(raw, f.name, number)
    return raw


# ---------------------------------------------------------------------------------------------
# stats from the C struct's own fields

_FIELDS: dict[str, tuple[str, ...]] = {}


def stats_fields(struct: str) -> tuple[str, ...]:
    """The field names of C `struct`, in order (ffi.typeof)."""
    names = _FIELDS.get(struct)
    if names is None:
        names = _FIELDS[struct] = tuple(name for name, _ in ffi.typeof(struct).fields)
    return names


def stats_values(struct: str, raw: Any) -> dict[str, int]:
    """Every field of `raw`, a `struct *` filled by the core, by its C name."""
    return {name: int(getattr(raw, name)) for name in stats_fields(struct)}


class CoreStats(Mapping[str, int]):
    """Counters copied from one C stats struct: every field of the struct, under its C name,
    as an attribute and as a key. The fields are the struct's own (ffi.typeof), so a field
    added in C is surfaced without a Python change: no wrapper mirrors a struct by hand."""

    __slots__ = ("_values", "struct")

    def __init__(self, struct: str, values: Mapping[str, int]) -> None:
        names = stats_fields(struct)
        missing = [name for name in names if name not in values]
        if missing:
            raise TypeError(f"{struct} values lack fields {missing}")
        self.struct = struct
        self._values = {name: int(values[name]) for name in names}

    @classmethod
    def read(cls, struct: str, raw: Any) -> CoreStats:
        """A copy of `raw`, a `struct *` filled by the core."""
        return cls(struct, stats_values(struct, raw))

    def __getattr__(self, name: str) -> int:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self.struct} has no counter {name!r}") from None

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CoreStats):
            return other.struct == self.struct and other._values == self._values
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.struct, tuple(self._values.values())))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self._values.items())
        return f"CoreStats({self.struct}: {inner})"
