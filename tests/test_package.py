"""What the installed package holds: the agent's own modules, no test oracle.

setuptools installs every file of every package under src/ (pyproject.toml:
packages.find where=src), so src/agent is the package's source list."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "agent"
ORACLE = REPO / "tests" / "oracle"



def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_package_holds_no_oracle_module() -> None:
    oracle_names = {path.name for path in ORACLE.glob("*.py")} - {"__init__.py"}
    assert oracle_names >= {"audit_reference.py", "audit_names.py"}
    shipped = {path.name for path in package_modules()}
    assert shipped, f"no module under {PACKAGE}"
    assert shipped & oracle_names == set()


def test_the_package_imports_nothing_from_tests() -> None:
    test_only = {"oracle", "hub", "conftest", "tests"}
    offenders = []
    for path in package_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.relative_to(REPO)}: {name}" for name in names
                          if name.split(".")[0] in test_only or "audit_reference" in name
                          or "audit_names" in name]
    assert offenders == []
