"""scripts/install, README's first command, with Debian's externally managed /usr/bin/python3
(PEP 668: its pip refuses to install) as the base: it makes a virtual environment in a
temporary prefix, installs the agent and its dependencies from the package index, compiles
the C core, and links micro-agent into a temporary bin directory. The installed agent then
collects a Heartbeat and parses a recorded audit log into exactly the events the repository
expects, a second run upgrades the same environment in place, and /usr/bin/python3's own
site-packages are as they were. Its errors (not root, no network, no venv module) say so.

About 40 s with pip's cache warm (the agent's wheel is built and the core compiled twice)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO, skip_unless_ci

pytestmark = [pytest.mark.root, pytest.mark.slow]

INSTALLER = REPO / "scripts" / "install"
DEBIAN_PYTHON = "/usr/bin/python3"
INSTALL_TIMEOUT = 600


def run_installer(*args: str, env: dict[str, str] | None = None,
                  wrapper: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*wrapper, str(INSTALLER), *args], capture_output=True, text=True,
                          check=False, timeout=INSTALL_TIMEOUT,
                          env={**os.environ, "PYTHON": DEBIAN_PYTHON, **(env or {})})


def debian_python_paths() -> list[Path]:
    """Where /usr/bin/python3 installs and imports packages: its site directories and the
    user site directory."""
    out = subprocess.run(
        [DEBIAN_PYTHON, "-c",
         "import site; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()]))"],
        capture_output=True, text=True, check=True).stdout
    return [Path(line) for line in out.splitlines() if line]


def snapshot(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """Every file and directory under paths with its size and modification time. __pycache__
    is left out: any process importing a module may write bytecode there."""
    seen: dict[str, tuple[int, int]] = {}
    for top in paths:
        if not top.exists():
            seen[str(top)] = (-1, -1)
            continue
        for root, dirs, files in os.walk(top):
            dirs[:] = [name for name in dirs if name != "__pycache__"]
            for name in [*dirs, *files]:
                path = os.path.join(root, name)
                status = os.lstat(path)
                seen[path] = (status.st_size, status.st_mtime_ns)
    return seen


class Installed:
    def __init__(self, root: Path) -> None:
        self.prefix = root / "opt" / "iot-micro-agent"
        self.bin_dir = root / "bin"
        self.command = self.bin_dir / "micro-agent"

    def args(self) -> tuple[str, ...]:
        return ("--prefix", str(self.prefix), "--bin-dir", str(self.bin_dir))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    if os.geteuid() != 0:
        skip_unless_ci("scripts/install runs as root")
    if not Path(DEBIAN_PYTHON).exists():
        skip_unless_ci(f"no {DEBIAN_PYTHON} (Debian's python3)")
    stdlib = subprocess.run(
        [DEBIAN_PYTHON, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True, text=True, check=True).stdout.strip()
    if not (Path(stdlib) / "EXTERNALLY-MANAGED").exists():
        skip_unless_ci(f"{DEBIAN_PYTHON} is not externally managed (PEP 668), the case tested")

    target = Installed(tmp_path_factory.mktemp("install"))
    site_paths = debian_python_paths()
    before = snapshot(site_paths)
    done = run_installer(*target.args())
    assert done.returncode == 0, f"scripts/install failed:\n{done.stdout}\n{done.stderr}"
    assert snapshot(site_paths) == before, f"{DEBIAN_PYTHON}'s site-packages changed"
    assert f"making the virtual environment {target.prefix}" in done.stdout
    yield target


def test_the_environment_is_a_venv_of_debians_python(installed: Installed) -> None:
    probe = "import sys, agent._core; print(sys.prefix, sys.base_prefix, agent._core.__file__)"
    out = subprocess.run(
        [str(installed.prefix / "bin" / "python"), "-c", probe],
        capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == str(installed.prefix)
    assert out[1] == "/usr"
    assert out[2].startswith(str(installed.prefix / "lib")), out[2]


def test_the_link_is_the_environments_command(installed: Installed) -> None:
    assert installed.command.is_symlink()
    assert os.readlink(installed.command) == str(installed.prefix / "bin" / "micro-agent")


def test_the_installed_agent_collects_a_heartbeat(installed: Installed) -> None:
    done = subprocess.run([str(installed.command), "collect", "Heartbeat"], capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [event["t"] for event in events] == ["heartbeat"]
    assert events[0]["ver"] == "0.1.0" and events[0]["src"] == "agent"


def test_the_installed_agent_parses_the_fixture_as_expected(installed: Installed) -> None:
    """The core compiled by the install gives, byte for byte, the events the repository
    records for device-raw.log (tests/fixtures/audit/, checked against the reference parser
    by the audit tests)."""
    done = subprocess.run([str(installed.command), "parse-audit",
                           str(FIXTURES / "device-raw.log")],
                          capture_output=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (FIXTURES / "device-raw.events.jsonl").read_bytes()
    assert b"0 malformed lines" in done.stderr


def test_a_second_run_upgrades_in_place(installed: Installed) -> None:
    environment_python = (installed.prefix / "bin" / "python").resolve()
    marker = installed.prefix / "lib" / "marker-of-the-first-install"
    marker.write_text("")
    done = run_installer(*installed.args())
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "making the virtual environment" not in done.stdout
    assert "Successfully uninstalled iot-micro-agent-0.1.0" in done.stdout
    assert marker.exists(), "the environment was made anew"
    assert (installed.prefix / "bin" / "python").resolve() == environment_python
    again = subprocess.run([str(installed.command), "collect", "Heartbeat"], capture_output=True,
                           text=True, check=False, timeout=60)
    assert again.returncode == 0 and '"t":"heartbeat"' in again.stdout, again.stderr


def test_a_directory_it_did_not_make_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        skip_unless_ci("scripts/install runs as root")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious").write_text("keep")
    done = run_installer("--prefix", str(foreign), "--no-link")
    assert done.returncode == 1
    assert "was not made by scripts/install" in done.stderr
    assert [path.name for path in foreign.iterdir()] == ["precious"]


def test_not_root_is_an_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        skip_unless_ci("switching to another user needs root")
    done = run_installer("--prefix", str(tmp_path / "opt"), "--no-link",
                         wrapper=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
    assert done.returncode == 1
    assert "error: run it as root" in done.stderr
    assert not (tmp_path / "opt").exists()


def test_no_network_is_an_error_that_says_so(tmp_path: Path) -> None:
    """In a network namespace of its own (only a loopback that is down) and with pip's
    configuration ignored (this machine's may name local indexes), pip cannot fetch what the
    build needs: the installer says the index is out of reach."""
    if os.geteuid() != 0:
        skip_unless_ci("a network namespace needs root")
    pip_free = {name: value for name, value in os.environ.items() if not name.startswith("PIP_")}
    env = {**pip_free, "PYTHON": DEBIAN_PYTHON, "PIP_CONFIG_FILE": os.devnull}
    done = subprocess.run(["unshare", "--net", str(INSTALLER), "--prefix", str(tmp_path / "opt"),
                           "--no-link"], capture_output=True, text=True, check=False,
                          timeout=INSTALL_TIMEOUT, env=env)
    assert done.returncode == 1, done.stdout
    assert "could not reach the package index" in done.stderr, done.stderr
    assert not (tmp_path / "opt" / "bin" / "micro-agent").exists()


def test_a_python_without_venv_outside_debian_is_an_error(tmp_path: Path) -> None:
    """A Python that dpkg does not own and whose ensurepip is missing (shadowed here): no
    apt-get can fix it, and the installer says what is wrong instead of failing in venv."""
    if os.geteuid() != 0:
        skip_unless_ci("scripts/install runs as root")
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    owned = subprocess.run(["dpkg-query", "-S", base], capture_output=True, check=False)
    if owned.returncode == 0:
        pytest.skip(f"this test's Python ({base}) is Debian's; it needs one from elsewhere")
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "ensurepip.py").write_text("raise ImportError('no ensurepip here')\n")
    done = run_installer("--prefix", str(tmp_path / "opt"), "--no-link",
                         env={"PYTHON": base, "PYTHONPATH": str(shadow)})
    assert done.returncode == 1
    assert "has no working venv module" in done.stderr and "not Debian's" in done.stderr
    assert not (tmp_path / "opt").exists()
