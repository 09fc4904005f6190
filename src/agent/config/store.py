"""The configuration layers and the one place they are validated: built-in defaults, then the
local JSON file, then the module twin's desired properties; later wins.

Every value is validated when it arrives. A value that fails (wrong type, out of range,
unknown name) never stops the agent: the field keeps its last good value and its name is
listed in `latest_invalid_fields` until a later value for it is valid or removed.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config.local import LOCAL_ONLY, LOCAL_ONLY_REASON
from agent.config.schema import FIELDS, Config, InvalidValue, describe
from agent.record import record

DEFAULT_CONFIG_PATH = "/etc/iot-micro-agent/config.json"

# A larger file is not a configuration (the whole schema in JSON is about 2.5 KB).
MAX_FILE_BYTES = 1 << 20
# Unknown names are listed under at most this many characters.
MAX_NAME_CHARS = 128

# Listed when a desired document is not a JSON object ("$" cannot start a property name).
NOT_AN_OBJECT = "$desired"

LATEST_SUCCESS = "success"
LATEST_FAILED = "failed"


def _shown_name(key: object) -> str:
    name = key if isinstance(key, str) else describe(key)
    name = name.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(name) > MAX_NAME_CHARS:
        name = name[: MAX_NAME_CHARS - 3] + "..."
    return name


@record(frozen=True)
class Layer:
    """One source's validated values (typed, by twin name) and its invalid names with their
    reasons. Immutable: merging builds a new layer."""

    values: Mapping[str, Any]
    invalid: Mapping[str, str]

    @classmethod
    def empty(cls) -> Layer:
        return cls({}, {})

    def merge(self, doc: Mapping[Any, Any], *, full: bool, local: bool = False) -> Layer:
        """Apply a desired document. `full`: the document replaces the layer (names absent
        from it revert to the layers below); else it is a patch that touches only its names.
        In both, null removes the name's override and an invalid value keeps the layer's
        last good value for that name. `local`: the local file's layer, where the local-only
        names (agent.config.local) are allowed and left to agent.config.local; any other
        layer lists them as invalid."""
        values: dict[str, Any] = {} if full else dict(self.values)
        invalid: dict[str, str] = {} if full else dict(self.invalid)
        invalid.pop(NOT_AN_OBJECT, None)  # this document is an object
        for key, raw in doc.items():
            if isinstance(key, str) and key.startswith("$"):
                continue  # $version, $metadata: the hub's bookkeeping, not ours
            name = _shown_name(key)
            field = FIELDS.get(key) if isinstance(key, str) else None
            if raw is None:
                values.pop(name, None)
                invalid.pop(name, None)
                continue
            if key in LOCAL_ONLY:
                if not local:
                    invalid[name] = LOCAL_ONLY_REASON
                continue
            if field is None:
                invalid[name] = "unknown property"
                continue
            try:
                values[name] = field.parse(raw)
                invalid.pop(name, None)
            except InvalidValue as err:
                invalid[name] = str(err)
                if full and name in self.values:
                    values[name] = self.values[name]
            except RecursionError:
                invalid[name] = "nested too deeply"
                if full and name in self.values:
                    values[name] = self.values[name]
        return Layer(values, invalid)


@record(frozen=True)
class ConfigUpdate:
    """What one change did: the configurations before and after, the sections and
    properties whose effective value changed, and the invalid names after it."""

    old: Config
    new: Config
    changed_sections: frozenset[str]
    changed_fields: tuple[str, ...]
    invalid_fields: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.changed_fields)

    @property
    def changed_collectors(self) -> frozenset[str]:
        return self.new.changed_collectors(self.old)


class ConfigStore:
    """The layers and the effective `Config` they make. Thread-safe: the uplink's worker calls
    patch handlers on its own thread while the pipeline reads `config` (an immutable object:
    take a reference and use it)."""

    def __init__(
        self, path: str | os.PathLike[str] | None = DEFAULT_CONFIG_PATH, *, load: bool = True
    ) -> None:
        self._path: Path | None = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._file = Layer.empty()
        self._file_error: str | None = None
        self._twin = Layer.empty()
        self._config = Config.defaults()
        if load:
            self.reload_file()

    # -- reading -------------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def config(self) -> Config:
        return self._config

    @property
    def invalid_reasons(self) -> dict[str, str]:
        """Invalid name -> one-line reason, prefixed with the layer ("file: ", "twin: ").
        A name invalid in both layers has both reasons."""
        with self._lock:
            return self._reasons()

    @property
    def latest_invalid_fields(self) -> tuple[str, ...]:
        return tuple(sorted(self.invalid_reasons))

    @property
    def latest_state(self) -> str:
        return LATEST_FAILED if self.invalid_reasons else LATEST_SUCCESS

    def _reasons(self) -> dict[str, str]:
        reasons: dict[str, list[str]] = {}
        if self._file_error is not None:
            reasons.setdefault(self._file_label(), []).append("file: " + self._file_error)
        for layer, label in ((self._file, "file"), (self._twin, "twin")):
            for name, reason in layer.invalid.items():
                reasons.setdefault(name, []).append(f"{label}: {reason}")
        return {name: "; ".join(parts) for name, parts in reasons.items()}

    def _file_label(self) -> str:
        # The whole file failed: its path stands in the list of invalid names.
        return str(self._path)

    # -- changing ------------------------------------------------------------------------

    def apply_patch(self, patch: object) -> ConfigUpdate:
        """A desired-properties patch (the uplink's patch handler): only its names change."""
        return self._apply_twin(patch, full=False)

    def apply_desired(self, desired: object) -> ConfigUpdate:
        """A full desired document (get_twin()["desired"], on connect and reconnect): it
        replaces the twin layer, so names absent from it revert to the file or default."""
        return self._apply_twin(desired, full=True)

    def _apply_twin(self, doc: object, *, full: bool) -> ConfigUpdate:
        with self._lock:
            if isinstance(doc, Mapping):
                self._twin = self._twin.merge(doc, full=full)
            else:
                # Not an object: nothing in it can be applied. The twin layer stays as it
                # was and the document is reported under a pseudo-name.
                invalid = dict(self._twin.invalid)
                invalid[NOT_AN_OBJECT] = f"expected an object, got {describe(doc)}"
                self._twin = Layer(self._twin.values, invalid)
            return self._rebuild()

    def reload_file(self) -> ConfigUpdate:
        """Read the local file again (at start and on SIGHUP). Missing: no file layer, not an
        error. Unreadable, too large, not JSON or not an object: the file layer keeps its
        last good values and the file's path is listed as invalid. Else the file replaces
        its layer, with the same per-name validation as the twin."""
        doc: Mapping[Any, Any] | None = None
        error: str | None = None
        missing = False
        if self._path is None:
            missing = True
        else:
            try:
                with open(self._path, "rb") as source:
                    data = source.read(MAX_FILE_BYTES + 1)
                if len(data) > MAX_FILE_BYTES:
                    error = f"larger than {MAX_FILE_BYTES} bytes"
                else:
                    parsed = json.loads(data)
                    if isinstance(parsed, Mapping):
                        doc = parsed
                    else:
                        error = f"expected a JSON object, got {describe(parsed)}"
            except FileNotFoundError:
                missing = True
            except OSError as err:
                error = f"cannot read: {err.strerror or err}"
            except (ValueError, RecursionError) as err:
                # UnicodeDecodeError and json.JSONDecodeError are ValueErrors.
                error = f"not valid JSON: {str(err).splitlines()[0][:200]}"
        with self._lock:
            if missing:
                self._file = Layer.empty()
                self._file_error = None
            elif doc is not None:
                self._file = self._file.merge(doc, full=True, local=True)
                self._file_error = None
            else:
                self._file_error = error
            return self._rebuild()

    def _rebuild(self) -> ConfigUpdate:
        old = self._config
        values = dict(self._file.values)
        values.update(self._twin.values)
        new = Config.from_values(values)
        self._config = new
        return ConfigUpdate(
            old=old,
            new=new,
            changed_sections=new.changed_sections(old),
            changed_fields=new.changed_fields(old),
            invalid_fields=tuple(sorted(self._reasons())),
        )
