"""python3 -m agent.config docs [PATH]: rewrite the generated property table of PATH (default:
docs/configuration.md and README.md) from the schema; `table` prints it."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from agent.config.schema import TABLE_BEGIN, TABLE_END, render_table

# The files that carry the table (paths from the repository's root).
DOCUMENTS = ("docs/configuration.md", "README.md")


def replace_table(text: str) -> str:
    begin = text.index(TABLE_BEGIN) + len(TABLE_BEGIN)
    end = text.index(TABLE_END, begin)
    return text[:begin] + "\n" + render_table() + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["table"]:
        sys.stdout.write(render_table())
        return 0
    if args[:1] == ["docs"] and len(args) <= 2:
        paths = [Path(args[1])] if len(args) == 2 else [Path(p) for p in DOCUMENTS]
        for path in paths:
            path.write_text(replace_table(path.read_text(encoding="utf-8")), encoding="utf-8")
        return 0
    print("usage: python3 -m agent.config table | docs [PATH]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
