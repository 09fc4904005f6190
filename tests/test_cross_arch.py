"""The C core cross-built for aarch64 and armhf (32-bit) gives, under qemu-user, the same bytes as
the x86_64 build: every decoder of native/xcheck/driver.c on the audit fixtures (cut in chunks)
and on the seeds of native/fuzz/seeds_*.py. A difference is the core depending on the machine
(byte order, alignment, the width of long, size_t or time_t). docs/cross-arch.md says more.

The drivers are built once per content of native/ (native/xcheck/build.sh) into pytest's cache.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEVICE_LOGS, FIXTURES, skip_unless_ci

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
# The ARM builds (native/xcheck/build.sh) and the emulator each runs under: armhf with 64-bit
# time_t and off_t (Debian trixie on), armhf-time32 with glibc's 32-bit default (Debian 12).
EMULATED = {"aarch64": "qemu-aarch64-static", "armhf": "qemu-arm-static",
            "armhf-time32": "qemu-arm-static"}
TOOLS = ("gcc", "aarch64-linux-gnu-gcc", "arm-linux-gnueabihf-gcc", *EMULATED.values())
# Every decoder of the driver, and the seed writer (native/fuzz/seeds_<name>.py) of the binary
# ones; the audit text decoders read the fixtures, msgpack the programs written here.
SEEDED = ("aggregate", "audit_netlink", "cn_proc", "index", "inet_diag", "proc_net", "procfs",
          "utmp", "dns", "nftables")
DECODERS = (*SEEDED, "audit_text", "audit_record", "msgpack")
CHUNKS = 3  # pieces each audit log is cut into (whole lines)
EDGE_NUMBERS = (b"2147483647", b"2147483648", b"4294967295", b"4294967296",
                b"9223372036854775807", b"9223372036854775808", b"18446744073709551615",
                b"18446744073709551616", b"99999999999999999999999", b"0")

pytestmark = pytest.mark.slow


def _source_key() -> str:
    """A hash of everything a driver is built from, and of the compilers' versions."""
    h = hashlib.sha256()
    for path in sorted([*NATIVE.glob("*.[ch]"), *(NATIVE / "xcheck").glob("*")]):
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    for cc in TOOLS[:3]:
        h.update(subprocess.run([cc, "--version"], capture_output=True, check=True).stdout)
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def drivers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        skip_unless_ci(
            f"missing {', '.join(missing)} (Debian: gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf "
            "libc6-dev-arm64-cross libc6-dev-armhf-cross qemu-user-static; scripts/test "
            "installs them)"
        )
    # pytest's cache when there is one (not under -p no:cacheprovider): builds kept across runs.
    pytest_cache = getattr(request.config, "cache", None)
    cache = (Path(pytest_cache.mkdir("xcheck")) if pytest_cache is not None
             else tmp_path_factory.mktemp("xcheck"))
    out = cache / _source_key()
    built = {arch: out / f"driver-{arch}" for arch in ("x86_64", *EMULATED)}
    if not all(path.exists() for path in built.values()):
        run = subprocess.run(
            ["nice", "-n", "19", "bash", str(NATIVE / "xcheck" / "build.sh"), str(out)],
            check=False, capture_output=True, text=True,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        for old in cache.iterdir():  # builds of other sources: only the newest is kept
            if old != out:
                shutil.rmtree(old)
    return built


def _msgpack_programs() -> dict[str, bytes]:
    """Writer programs for the driver's msgpack decoder: every call at every operand width,
    edge values, and str/bin around the 31/255/65535 length steps."""
    ops = bytearray()
    for call in range(12):
        for width_sel, width in enumerate((1, 2, 4, 8)):
            for value in (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFFFFFF, 2**63, 2**64 - 1):
                if call in (6, 7) and value > 300:
                    continue
                ops.append(call | width_sel << 4)
                ops += (value % 2**(8 * width)).to_bytes(width, "little")
                if call in (6, 7):
                    ops += bytes((value * 7 + k) % 256 for k in range(value % 2**(8 * width)))
    return {"every-call": bytes(ops), "bytes-0-255": bytes(range(256)),
            "empty-map": b"\x09\x00", "long-str": b"\x26" + (299).to_bytes(2, "little") * 200}


def _edge_numbers(text: bytes) -> bytes:
    """text with each number after '=', '(' or ':' replaced by the next of EDGE_NUMBERS."""
    numbers = itertools.cycle(EDGE_NUMBERS)
    return re.sub(rb"(?<=[=(:])\d+", lambda _: next(numbers), text)


def _inputs(tmp: Path) -> list[tuple[str, Path]]:
    """(decoder, input file) for every decoder: the seeds the fuzz seed writers make, the audit
    logs in chunks of whole lines (and one chunk moved past 2038, for 32-bit time_t)."""
    cases: list[tuple[str, Path]] = []
    for name in SEEDED:
        folder = tmp / "seeds" / name
        folder.mkdir(parents=True)
        subprocess.run([sys.executable, str(NATIVE / "fuzz" / f"seeds_{name}.py"), str(folder)],
                       check=True)
        files = sorted(folder.iterdir())
        assert files, f"seeds_{name}.py wrote no seed"
        cases += [(name, path) for path in files]
    logs = tmp / "logs"
    logs.mkdir()
    for log in DEVICE_LOGS:
        lines = (FIXTURES / log).read_bytes().splitlines(keepends=True)
        step = -(-len(lines) // CHUNKS)
        for k in range(CHUNKS):
            chunk = logs / f"{log}.{k}"
            chunk.write_bytes(b"".join(lines[k * step:(k + 1) * step]))
            cases += [("audit_text", chunk), ("audit_record", chunk)]
        # The same records 2**31 s later: their times overflow a 32-bit time_t.
        late = logs / f"{log}.after-2038"
        late.write_bytes(b"".join(
            line.replace(b"audit(1", b"audit(4", 1) for line in lines[:step // 4]))
        cases += [("audit_text", late), ("audit_record", late)]
        # The same records with their numbers at the edges of 32- and 64-bit integers, where
        # a parser into `long` or `size_t` would read them differently on armhf.
        edges = logs / f"{log}.edge-numbers"
        edges.write_bytes(_edge_numbers(b"".join(lines[:step // 4])))
        cases += [("audit_text", edges), ("audit_record", edges)]
    programs = tmp / "msgpack"
    programs.mkdir()
    for name, program in _msgpack_programs().items():
        (programs / name).write_bytes(program)
        cases.append(("msgpack", programs / name))
    assert {decoder for decoder, _ in cases} == set(DECODERS)
    return cases


def _run(command: list[str], decoder: str, path: Path) -> bytes:
    run = subprocess.run(
        [*command, decoder, str(path)], check=False, capture_output=True, timeout=120
    )
    assert run.returncode == 0, f"{' '.join(command)} {decoder} {path}: {run.stderr.decode()}"
    return run.stdout


def test_arm_builds_give_the_x86_64_bytes(drivers: dict[str, Path], tmp_path: Path) -> None:
    differences: list[str] = []
    events = dict.fromkeys(DECODERS, 0)
    for decoder, path in _inputs(tmp_path):
        want = _run([str(drivers["x86_64"])], decoder, path)
        # Each run draws its own index seed: the output must not depend on it.
        assert _run([str(drivers["x86_64"])], decoder, path) == want, (decoder, path)
        events[decoder] += len(want)
        for arch, emulator in EMULATED.items():
            got = _run(["nice", "-n", "19", emulator, str(drivers[arch])], decoder, path)
            if got != want:
                at = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b),
                          min(len(got), len(want)))
                differences.append(
                    f"{arch} {decoder} {path.name}: {len(got)} vs {len(want)} bytes, first "
                    f"difference at byte {at}: {got[at:at + 24].hex()} vs {want[at:at + 24].hex()}"
                )
    assert not differences, "\n".join(differences)
    # Every decoder produced output to compare, not only empty runs.
    assert all(events.values()), events
