"""The tests of the C core again, on a core built with AddressSanitizer and
UndefinedBehaviorSanitizer: the audit parser's, the aggregator's and the live sources'
(real kernel, real /proc, real sockets: what the decoders meet in the field).

native/build_core.py compiles agent._core into a temporary directory beside a copy of
src/agent, with the sanitizer flags in AGENT_CORE_CFLAGS / AGENT_CORE_LDFLAGS; then the test
files run in a child pytest that imports that copy first, with gcc's ASan and UBSan runtimes
preloaded into the interpreter (a Python built without them can only load a sanitized
extension that way). Any sanitizer report aborts the child. The memory-flat checks
(tests/leakcheck.py) skip there: ASan's quarantine holds freed memory on purpose.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.live, pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
# -fno-wrapv: Python's own CFLAGS, which extensions inherit, say -fwrapv, under which signed
# overflow is defined and UBSan does not check it.
CFLAGS = (
    "-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
    " -O1 -g -fno-wrapv"
)
LDFLAGS = "-fsanitize=address,undefined"
SYMBOLIZER = Path("/usr/lib/llvm-14/bin/llvm-symbolizer")
# The test files of the C core's entry points (glob patterns under tests/).
SANITIZED_TESTS = (
    "test_audit_*.py",
    "test_live_audit.py",
    "test_aggregate.py",
    "test_checkpoint.py",
    "test_index.py",
    "test_msgpack.py",
    "test_proc_connector.py",
    "test_proc_scan.py",
    "test_proc_poll.py",
    "test_sock_diag.py",
    "test_proc_net.py",
    "test_utmp.py",
    "test_file_system.py",
    "test_peripheral.py",
    "test_native_protocol.py",
    "test_dns.py",
    "test_dns_live.py",
    "test_nftables.py",
)

# Imported by the child pytest (-p) before it collects anything: it binds `agent` to the
# sanitized copy and says which file that is.
PROBE = """\
import agent._core

print("sanitized agent._core:", agent._core.__file__, flush=True)
"""


def _gcc_runtime(name: str) -> str:
    path = subprocess.run(
        ["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert os.path.isabs(path) and os.path.exists(path), f"gcc has no {name} (got {path!r})"
    return path


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _build_sanitized_core(dest: Path) -> Path:
    """native/ and src/agent copied into dest, agent._core compiled there; returns the .so."""
    shutil.copytree(
        ROOT / "native",
        dest / "native",
        ignore=shutil.ignore_patterns("fuzz", "__pycache__", "*.o", "*.so"),
    )
    shutil.copytree(
        ROOT / "src" / "agent",
        dest / "agent",
        ignore=shutil.ignore_patterns("__pycache__", "_core*"),
    )
    # cffi compiles with the current directory set to its tmpdir: build from dest, whose
    # relative source paths (native/*.c) build_core.py derives from the working directory.
    build = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import runpy; runpy.run_path('native/build_core.py')['ffibuilder']"
                ".compile(tmpdir='.', verbose=True)"
            ),
        ],
        cwd=dest,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=dict(os.environ, AGENT_CORE_CFLAGS=CFLAGS, AGENT_CORE_LDFLAGS=LDFLAGS),
    )
    assert build.returncode == 0, f"sanitized build failed:\n{build.stdout}\n{build.stderr}"
    built = sorted((dest / "agent").glob("_core*.so"))
    assert len(built) == 1, f"expected one agent/_core*.so in {dest}, found {built}"
    return built[0]


@pytest.mark.timeout(1200)
def test_core_tests_pass_under_asan_and_ubsan(tmp_path: Path) -> None:
    test_files = sorted(
        p.relative_to(ROOT).as_posix()
        for pattern in SANITIZED_TESTS
        for p in (ROOT / "tests").glob(pattern)
    )
    assert len(test_files) >= len(SANITIZED_TESTS), f"missing test files: {test_files}"

    core = _build_sanitized_core(tmp_path)
    symbols = subprocess.run(
        ["nm", "-D", str(core)], capture_output=True, text=True, check=True
    ).stdout
    assert "__asan_init" in symbols and "__ubsan_handle_" in symbols, (
        f"{core} is not instrumented for ASan and UBSan"
    )
    (tmp_path / "sanitizer_probe.py").write_text(PROBE)

    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")])),
        LD_PRELOAD=f"{_gcc_runtime('libasan.so')}:{_gcc_runtime('libubsan.so')}",
        # Python's objects (the bytes the core reads) from malloc, so ASan sees their bounds.
        PYTHONMALLOC="malloc",
        # Python leaks by design at exit: no leak check here.
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
        AGENT_SANITIZED="1",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
    )
    if SYMBOLIZER.exists():
        env["ASAN_SYMBOLIZER_PATH"] = str(SYMBOLIZER)
    # -s: a sanitizer report goes to fd 2 and the process ends at once; a capturing pytest
    # would never show it.
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "sanitizer_probe",
            *test_files,
            "-x",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=1150,
        check=False,
    )
    output = run.stdout + run.stderr
    print(output)
    status = run.returncode
    assert status == 0, f"tests under ASan/UBSan exited {status}:\n{_tail(output)}"
    assert f"sanitized agent._core: {core}" in output, (
        f"the child did not import the sanitized core {core}:\n{_tail(output)}"
    )
    summary = re.findall(r"^(?:=+ )?(\d+) passed", output, re.MULTILINE)  # pytest's closing line
    assert summary and int(summary[-1]) > 0, (
        f"no test passed under the sanitizers:\n{_tail(output)}"
    )
