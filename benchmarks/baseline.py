"""Regressions caught: the ratios of ours against each peer, from pytest-benchmark's JSON,
compared with the committed baseline (benchmarks/baseline-ratios.json). scripts/bench runs it
after a timed run:

    python3 benchmarks/baseline.py compare RESULTS.json [--baseline FILE]
    python3 benchmarks/baseline.py update RESULTS.json [--baseline FILE]

A ratio is the peer's median time over ours (how many times faster ours is: higher is better),
so that a slower or faster machine moves both sides and leaves it; absolute times are never
compared. Each entry of the baseline names the two benchmarks by their pytest names (as
pytest-benchmark's `fullname`, e.g. `bench_audit.py::test_core`) and holds the ratio. A
benchmark that times both sides itself, interleaved in one child (bench_inventory.py's
`Firewall changed`), records the ratio in its extra_info: its entry names the benchmark
(`within`) and the key (`extra`) instead.

compare: exit 1 when a ratio fell by more than the tolerance (25 %: now < 0.75 x baseline),
0 otherwise; an improved ratio passes; a pair the results do not hold (a benchmark skipped,
not selected with -k, renamed) is reported as missing and fails nothing, so that a partial run
compares what it ran. update: the baseline's ratios rewritten from the results (pairs the
results lack keep their value, reported).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

BASELINE = Path(__file__).resolve().with_name("baseline-ratios.json")
TOLERANCE = 0.25


def medians(results: dict[str, object]) -> dict[str, float]:
    """fullname -> median seconds, from pytest-benchmark's --benchmark-json document."""
    out: dict[str, float] = {}
    for bench in results.get("benchmarks", []):  # type: ignore[attr-defined]
        stats = bench.get("stats") or {}
        median = stats.get("median")
        if isinstance(median, (int, float)) and median > 0:
            out[str(bench["fullname"])] = float(median)
    return out


def find(times: dict[str, float], name: str) -> float | None:
    """The median of benchmark `name`, whatever directory pytest's root put before it."""
    for fullname, median in times.items():
        if fullname == name or fullname.endswith("/" + name):
            return median
    return None


def extras(results: dict[str, object]) -> dict[str, dict[str, object]]:
    """fullname -> the benchmark's extra_info."""
    return {str(bench["fullname"]): dict(bench.get("extra_info") or {})
            for bench in results.get("benchmarks", [])}  # type: ignore[attr-defined]


def current_ratios(baseline: dict[str, object], results: dict[str, object]) -> dict[str, float]:
    """Each baseline pair's ratio (peer median / ours median) in the results, where both ran."""
    times = medians(results)
    infos = extras(results)
    out = {}
    for key, pair in baseline["ratios"].items():  # type: ignore[attr-defined]
        if "within" in pair:
            info = next((v for k, v in infos.items()
                         if k == pair["within"] or k.endswith("/" + pair["within"])), {})
            ratio = info.get(pair["extra"])
            if isinstance(ratio, (int, float)) and ratio > 0:
                out[key] = float(ratio)
            continue
        ours, peer = find(times, pair["ours"]), find(times, pair["peer"])
        if ours is not None and peer is not None:
            out[key] = peer / ours
    return out


@dataclass
class Comparison:
    worse: list[str] = field(default_factory=list)  # beyond the tolerance: fails
    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.worse)


def compare(baseline: dict[str, object], now: dict[str, float],
            tolerance: float | None = None) -> Comparison:
    limit = float(baseline.get("tolerance", TOLERANCE)) if tolerance is None else tolerance
    result = Comparison()
    for key, pair in baseline["ratios"].items():  # type: ignore[attr-defined]
        then = float(pair["ratio"])
        if then <= 0:
            result.missing.append(f"{key}: no baseline ratio yet (scripts/bench --update-baseline)")
            continue
        if key not in now:
            result.missing.append(f"{key}: not in the results (baseline {then:.3g}x)")
            continue
        change = now[key] / then - 1
        line = f"{key}: {now[key]:.3g}x, baseline {then:.3g}x ({change:+.0%})"
        if change < -limit:
            result.worse.append(line + f": worse by more than {limit:.0%}")
        else:
            result.ok.append(line)
    return result


def update(baseline: dict[str, object], now: dict[str, float]) -> list[str]:
    """Rewrites the baseline's ratios in place; returns the keys the results lacked."""
    kept = []
    for key, pair in baseline["ratios"].items():  # type: ignore[attr-defined]
        if key in now:
            pair["ratio"] = round(now[key], 3)
        else:
            kept.append(key)
    return kept


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="baseline", description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("compare", "update"))
    ap.add_argument("results", type=Path, help="pytest-benchmark's --benchmark-json file")
    ap.add_argument("--baseline", type=Path, default=BASELINE)
    args = ap.parse_args(argv)
    baseline = json.loads(args.baseline.read_text())
    now = current_ratios(baseline, json.loads(args.results.read_text()))
    if args.action == "update":
        kept = update(baseline, now)
        args.baseline.write_text(json.dumps(baseline, indent=1) + "\n")
        print(f"baseline: {len(now)} ratio(s) rewritten in {args.baseline}")
        for key in kept:
            print(f"baseline: {key}: not in the results, kept")
        return 0
    result = compare(baseline, now)
    print("ratios, ours against each peer (peer time / ours), against the baseline:")
    for line in result.ok:
        print(f"  ok       {line}")
    for line in result.missing:
        print(f"  missing  {line}")
    for line in result.worse:
        print(f"  WORSE    {line}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
