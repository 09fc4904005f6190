"""The package's /etc/iot-micro-agent/config.json, generated from the schema
(src/agent/config/schema.py): every property at its default, each preceded by its
documentation.

JSON has no comments. The loader skips every key that starts with "$" (the hub's `$version`
and `$metadata` in a twin; comments in the file), so the documentation of a property `Name` is
the string under the key `"$Name"`, right before it: its type, range and meaning. The file
begins with `"$comment"`, which says how to read and edit it. docs/configuration.md describes
the convention.

    python3 packaging/default_config.py [PATH]   # print it, or write it to PATH
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from agent.config.schema import FIELDS, Field  # (after the path above)

HEADER = (
    "The local configuration of iot-micro-agent (docs/configuration.md): the module twin's "
    "desired property names, every one at its default. A key starting with $ is a comment "
    "the agent skips; \"$Name\" documents the property Name after it. A property removed "
    "from this file takes its default; the module twin's desired properties override this "
    "file. After an edit: systemctl reload iot-micro-agent (SIGHUP rereads it). An invalid "
    "value is logged, shown by micro-agent status and reported in latest_invalid_fields; the "
    "property keeps its last good value."
)


def describe(field: Field) -> str:
    """One line: the kind of value, its range and what the property does."""
    return f"{field.type_doc}; {field.range_doc}. {field.meaning}"


def document() -> dict[str, object]:
    doc: dict[str, object] = {"$comment": HEADER}
    for name, field in FIELDS.items():
        doc["$" + name] = describe(field)
        doc[name] = field.default_json()
    return doc


def render() -> str:
    return json.dumps(document(), indent=2, ensure_ascii=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if len(argv) > 1:
        print("usage: python3 packaging/default_config.py [PATH]", file=sys.stderr)
        return 2
    if argv:
        Path(argv[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
