"""docs/examples/kernel-config.sh, the board check docs/operations.md gives operators: it
reads a kernel configuration (plain or gzipped, as /proc/config.gz is) and says, per option the
collectors use, whether the kernel has it; every option of the doc's table is checked."""

from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docs" / "examples" / "kernel-config.sh"
DOC = REPO / "docs" / "operations.md"
OPTIONAL = {"CONFIG_IP_NF_IPTABLES", "CONFIG_INOTIFY_USER"}


def doc_options() -> set[str]:
    section = DOC.read_text().split("\n## Kernel options per collector\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(CONFIG_[A-Z0-9_]+)`", section, re.MULTILINE))


def script_options() -> set[str]:
    return set(re.findall(r"^check (CONFIG_[A-Z0-9_]+)", SCRIPT.read_text(), re.MULTILINE))


def run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPT), str(config)], capture_output=True, text=True,
                          check=False, timeout=30)


def lines(out: str) -> dict[str, str]:
    return {line.split()[0]: line.split()[1] for line in out.splitlines()}


def test_the_script_checks_every_option_of_the_doc() -> None:
    assert doc_options()
    assert doc_options() == script_options()


def test_a_kernel_with_everything(tmp_path: Path) -> None:
    options = sorted(script_options())
    config = tmp_path / "config.gz"
    config.write_bytes(gzip.compress("".join(f"{o}=y\n" for o in options).encode()))
    done = run(config)
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == dict.fromkeys(options, "y")


@pytest.mark.parametrize("option", sorted(OPTIONAL | {"CONFIG_PROC_EVENTS", "CONFIG_AUDIT"}))
def test_a_kernel_without_one_option(tmp_path: Path, option: str) -> None:
    config = tmp_path / "config"
    config.write_text("".join(f"{o}=m\n" if o != option else f"# {o} is not set\n"
                              for o in sorted(script_options())))
    done = run(config)
    found = lines(done.stdout)
    assert found.pop(option) == ("absent" if option in OPTIONAL else "missing")
    assert set(found.values()) == {"m"}
    assert done.returncode == (0 if option in OPTIONAL else 1)


def test_no_configuration(tmp_path: Path) -> None:
    assert run(tmp_path / "absent").returncode == 2


def test_this_machine() -> None:
    if not Path("/proc/config.gz").exists():
        pytest.skip("this kernel has no /proc/config.gz (CONFIG_IKCONFIG_PROC)")
    done = subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert done.returncode in (0, 1), done.stderr
    assert set(lines(done.stdout)) == script_options()
