"""The libFuzzer harnesses of native/fuzz: each builds with clang-14 (ASan + UBSan) and runs for
a short while from its seeds without a crash, a leak, a timeout or a failed oracle.

A failing run leaves the input that broke it in the test's temporary directory (its path is in
the failure message): replay it with `native/fuzz/out/<harness> <that file>` after
`native/fuzz/build.sh`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESSES = sorted(p.stem for p in (ROOT / "native" / "fuzz").glob("fuzz_*.c"))
SECONDS = 20
MIN_RUNS = 1000

# In CI (where scripts/test installs clang-14) a missing compiler fails the build, never skips.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("clang-14") is None and not os.environ.get("CI"),
    reason="clang-14 is not installed (scripts/test installs it with libclang-rt-14-dev)",
)]


def _report(output: str, lines: int = 60) -> str:
    """The end of a run's output without its progress lines and recommended dictionary."""
    kept = [
        line
        for line in output.splitlines()
        if not re.match(r"#\d+\s+(NEW|REDUCE|pulse|RELOAD)\b", line)
        and not re.match(r'"[^"]*" # Uses: \d+$', line)
    ]
    return "\n".join(kept[-lines:])


@pytest.fixture(scope="module")
def harness_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fuzz-build")
    build = subprocess.run(
        ["bash", str(ROOT / "native" / "fuzz" / "build.sh"), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert build.returncode == 0, f"native/fuzz/build.sh failed:\n{build.stdout}\n{build.stderr}"
    return out


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", HARNESSES)
def test_harness_runs_clean(name: str, harness_dir: Path, tmp_path: Path) -> None:
    seeds = harness_dir / "seeds" / name
    if name != "fuzz_msgpack":
        assert any(seeds.iterdir()), f"no seeds were cut for {name}"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    run = subprocess.run(
        [
            str(harness_dir / name),
            f"-max_total_time={SECONDS}",
            "-rss_limit_mb=2048",
            "-timeout=30",
            "-print_final_stats=1",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
            str(seeds),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=SECONDS * 10 + 120,
        check=False,
    )
    output = run.stdout + run.stderr
    status = run.returncode
    artifacts = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert status == 0, (
        f"{name} exited {status}; inputs left in {tmp_path}: {artifacts}\n{_report(output)}"
    )
    done = re.search(r"^Done (\d+) runs", output, re.MULTILINE)
    assert done is not None, f"{name} printed no 'Done N runs':\n{_report(output)}"
    runs = int(done.group(1))
    assert runs >= MIN_RUNS, f"{name} executed only {runs} inputs in {SECONDS} s"
