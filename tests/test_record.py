"""agent.record: the records every module of the agent declares its classes with, checked
against what the standard dataclasses do for the same declaration (the behaviour they
replace), and the one thing records are for: the local default never imports dataclasses
(tests/test_lazy_imports.py checks the running agent; here a bare import of every module the
agent's records live in)."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from agent.record import (
    MISSING,
    FrozenInstanceError,
    asdict,
    field,
    fields,
    is_record,
    record,
    replace,
)

C_ONLY = {"c": False}


@record(frozen=True)
class Options:
    size: int
    name: str = "x"
    tags: tuple[str, ...] = field(default=(), metadata=C_ONLY)
    seen: list[int] = field(default_factory=list)
    secret: str | None = field(default=None, repr=False)
    kind: ClassVar[str] = "options"


# The same declaration as a dataclass: the behaviour records keep.
@dataclasses.dataclass(frozen=True)
class OptionsDc:
    size: int
    name: str = "x"
    tags: tuple[str, ...] = dataclasses.field(default=(), metadata=C_ONLY)
    seen: list[int] = dataclasses.field(default_factory=list)
    secret: str | None = dataclasses.field(default=None, repr=False)
    kind: ClassVar[str] = "options"


@record
class State:
    count: int = 0
    names: dict[str, int] = field(default_factory=dict)


@record(frozen=True)
class Base:
    a: int
    b: str = field(default="b", metadata={"doc": "from the base"})


@record(frozen=True)
class Derived(Base):
    c: float = 1.5


@record(frozen=True)
class Checked:
    low: int
    high: int
    span: int = 0

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low > high")
        object.__setattr__(self, "span", self.high - self.low)


def test_construction_by_position_and_name_with_defaults() -> None:
    o = Options(3)
    assert (o.size, o.name, o.tags, o.seen, o.secret) == (3, "x", (), [], None)
    o = Options(4, "n", secret="s", tags=("t",))
    assert (o.size, o.name, o.tags, o.secret) == (4, "n", ("t",), "s")
    assert State().count == 0 and State(count=2).count == 2
    # The same arguments the dataclass refuses, refused the same way (TypeError).
    for args, kwargs in [((), {}), ((1, "n", (), [], None, "extra"), {}), ((1,), {"size": 2}),
                         ((1,), {"nope": 1})]:
        with pytest.raises(TypeError):
            OptionsDc(*args, **kwargs)
        with pytest.raises(TypeError):
            Options(*args, **kwargs)


def test_default_factory_gives_each_instance_its_own_object() -> None:
    first, second = Options(1), Options(1)
    first.seen.append(1)
    assert second.seen == [] and first.seen is not second.seen
    assert State().names is not State().names


def test_a_mutable_default_or_a_missing_default_after_a_default_is_refused() -> None:
    with pytest.raises(ValueError, match="default_factory"):
        @record
        class Shared:
            items: list[int] = []  # noqa: RUF012

    with pytest.raises(TypeError, match="without a default"):
        @record
        class Order:
            a: int = 1
            b: int  # type: ignore[misc]

    with pytest.raises(ValueError):
        field(default=1, default_factory=int)


def test_frozen_assignment_and_deletion_raise() -> None:
    o = Options(1)
    with pytest.raises(FrozenInstanceError):
        o.size = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):  # FrozenInstanceError is one, as dataclasses' is
        o.other = 1  # type: ignore[attr-defined]
    with pytest.raises(FrozenInstanceError):
        del o.name
    assert o.size == 1
    s = State()
    s.count = 5
    assert s.count == 5


def test_equality_and_hash_as_dataclasses() -> None:
    assert Options(1, "a") == Options(1, "a")
    assert Options(1, "a") != Options(1, "b")
    assert Options(1) != OptionsDc(1)  # another class: never equal
    assert Derived(1) != Base(1)
    assert hash(Derived(1, "a", 2.0)) == hash(Derived(1, "a", 2.0)) == hash((1, "a", 2.0))
    assert len({Base(1), Base(1), Base(2)}) == 2
    assert {Base(1): "x"}[Base(1)] == "x"
    # A mutable record is unhashable, as a dataclass without frozen=True.
    with pytest.raises(TypeError):
        hash(State())
    assert State(1) == State(1) and State(1) != State(2)


def test_repr_as_dataclasses() -> None:
    o = Options(1, "a", seen=[2], secret="hidden")
    dc = OptionsDc(1, "a", seen=[2], secret="hidden")
    assert repr(o) == repr(dc).replace("OptionsDc", "Options")
    assert "hidden" not in repr(o)
    assert repr(Derived(1)) == "Derived(a=1, b='b', c=1.5)"
    assert repr(State()) == "State(count=0, names={})"


def test_fields_with_defaults_and_metadata() -> None:
    got = [(f.name, f.default, f.default_factory, f.repr, dict(f.metadata)) for f in fields(Options)]
    want = [(f.name, f.default, f.default_factory, f.repr, dict(f.metadata))
            for f in dataclasses.fields(OptionsDc)]
    assert [g[0] for g in got] == [w[0] for w in want] == ["size", "name", "tags", "seen", "secret"]
    for g, w in zip(got, want):
        assert g[1] == (MISSING if w[1] is dataclasses.MISSING else w[1])
        assert g[2] == (MISSING if w[2] is dataclasses.MISSING else w[2])
        assert g[3:] == w[3:]
    assert fields(Options(1)) == fields(Options)  # an instance's are its class's
    with pytest.raises(TypeError):
        fields(OptionsDc)
    with pytest.raises(TypeError):
        fields_metadata = fields(Options)[2].metadata
        fields_metadata["c"] = True  # type: ignore[index]
    assert is_record(Options) and is_record(Options(1)) and not is_record(OptionsDc(1))
    # ClassVar annotations are no fields; the class attribute stays.
    assert "kind" not in {f.name for f in fields(Options)} and Options(1).kind == "options"


def test_replace_and_asdict() -> None:
    o = Options(1, "a", tags=("t",))
    r = replace(o, name="b")
    assert r == Options(1, "b", tags=("t",)) and o.name == "a"
    assert r.seen is o.seen  # replace passes the values on, as dataclasses.replace does
    with pytest.raises(TypeError):
        replace(o, nope=1)
    with pytest.raises(ValueError):  # __init__ and __post_init__ run for the new one
        replace(Checked(1, 2), low=3)
    assert asdict(Base(1)) == {"a": 1, "b": "b"}
    assert asdict(State(2)) == dataclasses.asdict(_StateDc(2))


@dataclasses.dataclass
class _StateDc:
    count: int = 0
    names: dict[str, int] = dataclasses.field(default_factory=dict)


def test_post_init_runs_after_the_fields_are_set() -> None:
    c = Checked(2, 5)
    assert c.span == 3 and c == Checked(2, 5, 0)
    with pytest.raises(ValueError, match="low > high"):
        Checked(5, 2)


def test_inheritance_takes_the_base_fields_first() -> None:
    assert [f.name for f in fields(Derived)] == ["a", "b", "c"]
    d = Derived(1, "x", 2.0)
    assert (d.a, d.b, d.c) == (1, "x", 2.0)
    assert isinstance(d, Base) and dict(fields(Derived)[1].metadata) == {"doc": "from the base"}
    with pytest.raises(FrozenInstanceError):
        d.a = 2  # type: ignore[misc]
    with pytest.raises(TypeError, match="frozen and a mutable"):
        @record
        class Mixed(Base):
            d: int = 0


def test_methods_the_class_defines_are_kept() -> None:
    @record(frozen=True)
    class Own:
        x: int

        def __repr__(self) -> str:
            return "own"

        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return 7

    assert repr(Own(1)) == "own" and Own(1) == Own(2) and hash(Own(3)) == 7


def test_match_args_and_pickle() -> None:
    assert Derived.__match_args__ == ("a", "b", "c")  # `case Derived(a, b, c)`
    o = Options(2, seen=[1])
    assert pickle.loads(pickle.dumps(o)) == o
    s = State(3, {"a": 1})
    assert pickle.loads(pickle.dumps(s)) == s


def test_the_agent_defines_its_classes_without_dataclasses(tmp_path: Path) -> None:
    # Every module of the agent imported in a fresh interpreter: none of them loads
    # dataclasses (or inspect, its largest import), except through a third-party package
    # that only a hub configuration loads (paho does not; the test lists what did).
    src = Path(__file__).resolve().parents[1] / "src" / "agent"
    modules = sorted(".".join(("agent", *p.relative_to(src).with_suffix("").parts))
                     .removesuffix(".__init__")
                     for p in src.rglob("*.py") if p.name != "__main__.py")
    script = ("import importlib, json, sys\n"
              f"for name in {modules!r}:\n"
              "    importlib.import_module(name)\n"
              "print(json.dumps(sorted(m for m in ('dataclasses', 'inspect', 'ast', 'dis') "
              "if m in sys.modules)))\n")
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())}
    done = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    assert len(modules) > 50
