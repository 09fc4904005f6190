"""Records: the agent's classes of named, typed fields (configuration sections, options, state,
per-batch records), declared as dataclasses are and typed by mypy as dataclasses are
(`dataclass_transform`), without the standard library's dataclasses module.

Why not dataclasses: it imports inspect, and with it ast, dis and tokenize (1.1 MB of RSS at
the loop's start), and it generates each class's __init__, __repr__, __eq__, __hash__ and
__setattr__ from source text (about 0.6 MB more for the agent's ~70 classes). Here every
record class shares one method of each kind, driven by the class's tuple of fields
(`__record_fields__`). Records are made per snapshot, batch or configuration, never per
event, so a generic __init__ is fast enough. docs/performance.md, "What the agent no longer
loads".

    @record(frozen=True)
    class Options:
        size: int = 64
        devices: tuple[str, ...] = field(default=(), metadata={"c": False})
        seen: set[int] = field(default_factory=set)
        key: str | None = field(default=None, repr=False)

What a record class gets, as a dataclass with its default arguments: an __init__ taking the
fields in order, by position or by name, an absent one taking its default or a new value of
its default_factory, then __post_init__() when the class has one; __repr__ `Options(size=64,
...)` without the fields marked repr=False; __eq__ between two instances of the same class,
field by field; __match_args__. Frozen: assigning or deleting an attribute raises
FrozenInstanceError (an AttributeError; __init__ and __post_init__ set fields with
object.__setattr__) and __hash__ hashes the fields; otherwise instances are unhashable. A
record class that inherits from record classes takes their fields first (a field named again
keeps its place). A method the class body defines itself is kept. `fields()`, `replace()`
and `asdict()` work as dataclasses' do, except that asdict() is shallow (a field's value as
it is). Not provided, because nothing here uses them: InitVar, KW_ONLY, order=, slots=, and
field(init=False, compare=False, hash=False).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

if TYPE_CHECKING:  # what mypy reads; at run time the marker would only set an attribute
    from typing_extensions import dataclass_transform
else:
    def dataclass_transform(**_: object) -> Callable[[Any], Any]:
        return lambda decorated: decorated

_T = TypeVar("_T")


class FrozenInstanceError(AttributeError):
    """An assignment to, or a deletion of, an attribute of a frozen record."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # no default given
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


class Field:
    """One field of a record class: its name, default or default_factory (MISSING when
    absent), whether __repr__ shows it, and metadata (read-only)."""

    __slots__ = ("default", "default_factory", "metadata", "name", "repr")

    def __init__(self, default: Any, default_factory: Any, repr: bool,
                 metadata: Mapping[str, Any] | None) -> None:
        self.name = ""  # set by @record
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.metadata = _NO_METADATA if not metadata else MappingProxyType(dict(metadata))

    def __repr__(self) -> str:
        return (f"Field(name={self.name!r}, default={self.default!r}, "
                f"default_factory={self.default_factory!r}, repr={self.repr!r}, "
                f"metadata={dict(self.metadata)!r})")


@overload
def field(*, default: _T, repr: bool = True, metadata: Mapping[str, Any] | None = None) -> _T: ...
@overload
def field(*, default_factory: Callable[[], _T], repr: bool = True,
          metadata: Mapping[str, Any] | None = None) -> _T: ...
@overload
def field(*, repr: bool = True, metadata: Mapping[str, Any] | None = None) -> Any: ...
def field(*, default: Any = MISSING, default_factory: Any = MISSING, repr: bool = True,
          metadata: Mapping[str, Any] | None = None) -> Any:
    """A field with more than a plain default: `x: list[int] = field(default_factory=list)`,
    `key: str | None = field(default=None, repr=False)`, `n: int = field(metadata={...})`."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("a field takes a default or a default_factory, not both")
    return Field(default, default_factory, repr, metadata)


# -- the methods every record class shares --------------------------------------------------


def _record_init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    specs: tuple[Field, ...] = cls.__record_fields__
    if len(args) > len(specs):
        raise TypeError(f"{cls.__qualname__}() takes {len(specs)} positional arguments "
                        f"but {len(args)} were given")
    assign = object.__setattr__ if cls.__record_frozen__ else setattr
    for spec, value in zip(specs, args):
        if spec.name in kwargs:
            raise TypeError(f"{cls.__qualname__}() got multiple values for argument "
                            f"{spec.name!r}")
        assign(self, spec.name, value)
    for spec in specs[len(args):]:
        value = kwargs.pop(spec.name, MISSING)
        if value is MISSING:
            if spec.default_factory is not MISSING:
                value = spec.default_factory()
            elif spec.default is not MISSING:
                value = spec.default
            else:
                raise TypeError(f"{cls.__qualname__}() missing required argument: "
                                f"{spec.name!r}")
        assign(self, spec.name, value)
    if kwargs:
        raise TypeError(f"{cls.__qualname__}() got an unexpected keyword argument "
                        f"{next(iter(kwargs))!r}")
    if cls.__record_post_init__:
        self.__post_init__()


def _values(obj: Any) -> tuple[Any, ...]:
    return tuple(getattr(obj, spec.name) for spec in type(obj).__record_fields__)


def _record_repr(self: Any) -> str:
    shown = ", ".join(f"{spec.name}={getattr(self, spec.name)!r}"
                      for spec in type(self).__record_fields__ if spec.repr)
    return f"{type(self).__qualname__}({shown})"


def _record_eq(self: Any, other: object) -> object:  # bool, or NotImplemented
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _record_hash(self: Any) -> int:
    return hash(_values(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r} of a frozen "
                              f"{type(self).__qualname__}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r} of a frozen "
                              f"{type(self).__qualname__}")


# -- the decorator --------------------------------------------------------------------------


def _is_class_var(annotation: object) -> bool:
    if isinstance(annotation, str):  # `from __future__ import annotations`
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return annotation is ClassVar or getattr(annotation, "__origin__", None) is ClassVar


def _make_record(cls: Any, frozen: bool) -> None:
    body = cls.__dict__
    specs: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        inherited = base.__dict__.get("__record_fields__")
        if inherited is None:
            continue
        if base.__dict__["__record_frozen__"] != frozen:
            raise TypeError(f"{cls.__qualname__}: a frozen and a mutable record cannot inherit "
                            "from each other")
        specs.update((spec.name, spec) for spec in inherited)
    for name, annotation in body.get("__annotations__", {}).items():
        if _is_class_var(annotation):
            continue
        value = body.get(name, MISSING)
        if isinstance(value, Field):
            spec = value
            if spec.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
        else:
            spec = Field(value, MISSING, True, None)
        spec.name = name
        if spec.default is not MISSING and type(spec.default).__hash__ is None:
            raise ValueError(f"{cls.__qualname__}.{name}: a mutable default "
                             f"({type(spec.default).__name__}) is shared by every instance: "
                             "use default_factory")
        specs[name] = spec
    fields_in_order = tuple(specs.values())
    defaulted = ""
    for spec in fields_in_order:
        if spec.default is not MISSING or spec.default_factory is not MISSING:
            defaulted = spec.name
        elif defaulted:
            raise TypeError(f"{cls.__qualname__}: field {spec.name!r} without a default "
                            f"follows {defaulted!r}, which has one")
    cls.__record_fields__ = fields_in_order
    cls.__record_frozen__ = frozen
    cls.__record_post_init__ = hasattr(cls, "__post_init__")
    own = {"__init__": _record_init, "__repr__": _record_repr, "__eq__": _record_eq,
           "__match_args__": tuple(specs)}
    for name, method in own.items():
        if name not in body:
            setattr(cls, name, method)
    # A class body that defines __eq__ alone has __hash__ = None put there by Python.
    explicit_hash = "__hash__" in body and not (body["__hash__"] is None and "__eq__" in body)
    if not explicit_hash:
        cls.__hash__ = _record_hash if frozen else None
    if frozen:
        for name in ("__setattr__", "__delattr__"):
            if name in body:
                raise TypeError(f"{cls.__qualname__}: a frozen record cannot define {name}")
        cls.__setattr__ = _frozen_setattr
        cls.__delattr__ = _frozen_delattr


@overload
def record(cls: type[_T], /) -> type[_T]: ...
@overload
def record(*, frozen: bool = False) -> Callable[[type[_T]], type[_T]]: ...
@dataclass_transform(field_specifiers=(field, Field))
def record(cls: type[_T] | None = None, /, *, frozen: bool = False
           ) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """`@record` or `@record(frozen=True)` on a class whose annotated attributes are its
    fields (ClassVar ones are not)."""
    def make(target: type[_T]) -> type[_T]:
        _make_record(target, frozen)
        return target

    return make if cls is None else make(cls)


# -- what the dataclasses module's functions do for dataclasses -----------------------------


def is_record(obj: object) -> bool:
    """Whether `obj` is a record class or an instance of one."""
    return hasattr(obj, "__record_fields__")


def fields(class_or_instance: Any) -> tuple[Field, ...]:
    """The fields of a record class or instance, in __init__'s order."""
    try:
        specs: tuple[Field, ...] = class_or_instance.__record_fields__
    except AttributeError:
        raise TypeError(f"not a record class or instance: {class_or_instance!r}") from None
    return specs


def replace(obj: _T, /, **changes: Any) -> _T:
    """A new record of obj's class with its fields, `changes` replacing some (__init__ and
    __post_init__ run for it)."""
    for spec in fields(obj):
        if spec.name not in changes:
            changes[spec.name] = getattr(obj, spec.name)
    return type(obj)(**changes)


def asdict(obj: object) -> dict[str, Any]:
    """A record's fields by name, each value as it is (not copied, nor converted if it is a
    record itself)."""
    return {spec.name: getattr(obj, spec.name) for spec in fields(obj)}
