"""The regression check of scripts/bench (benchmarks/baseline.py): ratios of ours against each
peer from pytest-benchmark's JSON, compared with the committed baseline. Pure: made-up results
documents of the same shape pytest-benchmark writes."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_baseline_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_baseline",
                                                  REPO / "benchmarks" / "baseline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


baseline_py = load_baseline_module()

BASELINE = {
    "tolerance": 0.25,
    "ratios": {
        "audit core vs laurel": {"ours": "bench_audit.py::test_core",
                                 "peer": "bench_audit.py::test_laurel", "ratio": 10.0},
        "utmp core vs last": {"ours": "bench_utmp.py::test_core",
                              "peer": "bench_utmp.py::test_last", "ratio": 4.0},
    },
}


def results(**medians: float) -> dict[str, object]:
    """A --benchmark-json document; keys are `file__test` for `file.py::test`, with the
    directory prefix pytest puts before them when the root is the repository."""
    benches = []
    for key, median in medians.items():
        module, test = key.split("__", 1)
        benches.append({"fullname": f"benchmarks/{module}.py::{test}", "name": test,
                        "stats": {"median": median, "min": median, "max": median}})
    return {"machine_info": {}, "benchmarks": benches}


def fresh() -> dict[str, object]:
    return json.loads(json.dumps(BASELINE))


def test_a_ratio_worse_by_more_than_the_tolerance_fails() -> None:
    # laurel 7x slower than ours where the baseline says 10x: 30 % worse.
    now = baseline_py.current_ratios(fresh(), results(
        bench_audit__test_core=1.0, bench_audit__test_laurel=7.0,
        bench_utmp__test_core=1.0, bench_utmp__test_last=4.0))
    assert now == pytest.approx({"audit core vs laurel": 7.0, "utmp core vs last": 4.0})
    result = baseline_py.compare(fresh(), now)
    assert result.failed
    assert len(result.worse) == 1 and result.worse[0].startswith("audit core vs laurel")
    assert [line.split(":")[0] for line in result.ok] == ["utmp core vs last"]


def test_an_improved_ratio_and_one_within_the_tolerance_pass() -> None:
    now = baseline_py.current_ratios(fresh(), results(
        bench_audit__test_core=0.5, bench_audit__test_laurel=7.5,  # 15x: better
        bench_utmp__test_core=1.0, bench_utmp__test_last=3.2))  # 3.2x: 20 % worse, tolerated
    result = baseline_py.compare(fresh(), now)
    assert not result.failed
    assert len(result.ok) == 2 and not result.missing
    # The same 20 % with a tighter tolerance is caught: the limit is the tolerance, not a
    # fixed number.
    assert baseline_py.compare(fresh(), now, tolerance=0.1).failed


def test_a_missing_pair_is_reported_and_fails_nothing() -> None:
    # utmp's peer did not run (skipped, or not selected with -k).
    now = baseline_py.current_ratios(fresh(), results(
        bench_audit__test_core=1.0, bench_audit__test_laurel=11.0, bench_utmp__test_core=1.0))
    result = baseline_py.compare(fresh(), now)
    assert not result.failed
    assert len(result.missing) == 1 and result.missing[0].startswith("utmp core vs last")


def test_the_command_line_exit_codes_and_update(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "baseline.json"
    base.write_text(json.dumps(BASELINE))
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps(results(bench_audit__test_core=1.0,
                                        bench_audit__test_laurel=5.0)))
    assert baseline_py.main(["compare", str(worse), "--baseline", str(base)]) == 1
    out = capsys.readouterr().out
    assert "WORSE" in out and "missing  utmp core vs last" in out
    # update takes what ran, keeps the rest; the same results then compare clean.
    assert baseline_py.main(["update", str(worse), "--baseline", str(base)]) == 0
    rewritten = json.loads(base.read_text())
    assert rewritten["ratios"]["audit core vs laurel"]["ratio"] == 5.0
    assert rewritten["ratios"]["utmp core vs last"]["ratio"] == 4.0
    assert baseline_py.main(["compare", str(worse), "--baseline", str(base)]) == 0


def test_the_committed_baseline_names_benchmarks_that_exist() -> None:
    """Every pair names two test functions of benchmarks/ (a rename would make a pair missing
    for ever, which compare only reports) and holds a measured ratio."""
    committed = json.loads(baseline_py.BASELINE.read_text())
    assert committed["ratios"], "the baseline holds no ratio"
    for key, pair in committed["ratios"].items():
        for side in ("within",) if "within" in pair else ("ours", "peer"):
            module, _, test = pair[side].partition("::")
            source = (REPO / "benchmarks" / module).read_text()
            name = test.split("[", 1)[0]
            assert re.search(rf"^def {re.escape(name)}\(", source, re.MULTILINE), (key, pair[side])
            if side == "within":  # the benchmark records the ratio under that key
                assert f'extra_info["{pair["extra"]}"]' in source, (key, pair["extra"])
        assert isinstance(pair["ratio"], (int, float)) and pair["ratio"] > 0, key


def test_a_ratio_recorded_within_one_benchmark() -> None:
    """A benchmark that times both sides itself keeps the ratio in its extra_info."""
    base = fresh()
    base["ratios"]["fw changed vs nft"] = {  # type: ignore[index]
        "within": "bench_inventory.py::test_firewall_changed", "extra": "nft_over_ours",
        "ratio": 3.0}
    doc = results(bench_audit__test_core=1.0, bench_audit__test_laurel=10.0)
    doc["benchmarks"].append({  # type: ignore[attr-defined]
        "fullname": "benchmarks/bench_inventory.py::test_firewall_changed",
        "name": "test_firewall_changed", "stats": {"median": 0.5},
        "extra_info": {"nft_over_ours": 2.0}})
    now = baseline_py.current_ratios(base, doc)
    assert now == pytest.approx({"audit core vs laurel": 10.0, "fw changed vs nft": 2.0})
    result = baseline_py.compare(base, now)
    assert result.failed and result.worse[0].startswith("fw changed vs nft")  # 3x -> 2x
    doc["benchmarks"][-1]["extra_info"] = {}  # type: ignore[index]
    assert "fw changed vs nft" not in baseline_py.current_ratios(base, doc)
