"""Configuration: every twin property's validation, the layers defaults < file < twin, patch
and full-document semantics, the reported properties and their minimal patches, and the
agreement of docs/configuration.md with the schema."""

from __future__ import annotations

import json
import math
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import __version__
from agent.config import (
    COLLECTORS,
    EVENT_COLLECTORS,
    FIELDS,
    CollectorState,
    Config,
    ConfigStore,
    Frequency,
    ProcessMode,
    ReportedState,
    UploadFormat,
    apply_merge_patch,
    build_reported,
    merge_patch_diff,
    render_table,
)
from agent.config.__main__ import replace_table
from agent.config.schema import SECTIONS, TABLE_BEGIN, TABLE_END
from agent.record import fields

REPO = Path(__file__).resolve().parents[1]


def store(tmp_path: Path | None = None, content: str | None = None) -> ConfigStore:
    """A store over a file in tmp_path holding `content` (no file when None)."""
    if tmp_path is None:
        return ConfigStore(None)
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    return ConfigStore(path)


# ---------------------------------------------------------------------------------------------
# A valid, non-default value for every property, and the typed value it must become.

VALID: dict[str, tuple[Any, Any]] = {
    "CollectorsCore_PriorityIntervals": (" 15, 60 ,480", (15, 60, 480)),
    "IothubModule_MessageTimeout": (60, 60),
    "Process_Mode": (4, ProcessMode.AUDIT),
    "Process_PollingInterval": (250000.0, 250000),
    "NetworkActivity_Devices": ("eth0, wlan0,,eth0", ("eth0", "wlan0")),
    "Login_UsePAM": (True, True),
    "FileSystem_Paths": ("/etc, /usr/bin", ("/etc", "/usr/bin")),
    "FileSystem_Recursive": (False, False),
    "SystemInformation_HardwareVendor": ("Acme Corp", "Acme Corp"),
    "SystemInformation_HardwareModel": (" Gateway 3 ", "Gateway 3"),
    "SystemInformation_HardwareSerialNumber": ("SN-0001", "SN-0001"),
    "SystemInformation_FirmwareVendor": ("Acme", "Acme"),
    "SystemInformation_FirmwareVersion": ("1.2.3-rc1", "1.2.3-rc1"),
    "Baseline_GroupsDisabled": (
        "Time Synchronization, Network Parameters Host",
        ("Time Synchronization", "Network Parameters Host"),
    ),
    "Baseline_ChecksDisabled": ("3.3.5,2.2.1.1", ("3.3.5", "2.2.1.1")),
    "Upload_Format": ("JSON", UploadFormat.JSON),
    "Upload_MaxMessageBytes": (4096 * 30, 4096 * 30),
    "Outbox_MaxBytes": (64 << 20, 64 << 20),
    "Outbox_CheckpointSeconds": (2, 2),
    "Audit_OwnIfFree": (False, False),
    "Audit_BacklogLimit": (16384, 16384),
    "Audit_ReceiveBufferBytes": (1 << 20, 1 << 20),
    "Audit_ExecPaths": (True, True),
    "NetworkActivity_PacketBufferSize": (1 << 20, 1 << 20),
    "Peripheral_CacheSize": (512, 512),
    "Statistics_CacheSize": (512, 512),
    "LogCollector_Disabled": (True, True),
    "LogCollector_MessageFrequency": ("High", Frequency.HIGH),
    "Peripheral_Disabled": (True, True),
    "Peripheral_MessageFrequency": ("medium", Frequency.MEDIUM),
}
for _name in COLLECTORS:
    VALID[f"{_name}_Disabled"] = (True, True)
    default = FIELDS[f"{_name}_MessageFrequency"].default
    other = Frequency.HIGH if default is not Frequency.HIGH else Frequency.LOW
    VALID[f"{_name}_MessageFrequency"] = (other.value, other)
for _name in EVENT_COLLECTORS:
    VALID[f"{_name}_CacheSize"] = (1024, 1024)


def typed(name: str, value: Any) -> Any:
    """Normalise a typed value for comparison with the VALID table (intervals as a tuple)."""
    if name == "CollectorsCore_PriorityIntervals":
        return (value.high, value.medium, value.low)
    return value


def test_every_property_has_a_valid_sample() -> None:
    assert set(VALID) == set(FIELDS)
    for name, (_raw, expected) in VALID.items():
        assert typed(name, FIELDS[name].default) != expected, f"{name}: sample is the default"


# ---------------------------------------------------------------------------------------------
# Invalid values by kind, from the documented type and range: the documentation is tested too.

NESTED = [{}, [], {"a": {"b": [1, {"c": None}]}}, [[[]]]]


def int_range(name: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.\.(\d+)", FIELDS[name].range_doc)
    if name == "Process_Mode":
        return (1, 4)
    assert match, f"{name}: no lo..hi in {FIELDS[name].range_doc!r}"
    return int(match.group(1)), int(match.group(2))


def invalid_values(name: str) -> list[Any]:
    f = FIELDS[name]
    kind = f.type_doc
    out: list[Any] = list(NESTED)
    if kind == "bool":
        out += ["true", "false", "True", 1, 0, "", 1.0, "yes"]
    elif kind == "int":
        lo, hi = int_range(name)
        out += [
            lo - 1,  # below range (for lo == 1 also zero)
            hi + 1,  # above range
            -1,  # negative
            -(2**63),
            10**100,  # huge
            2**64,
            1e300,
            lo + 0.5,  # a fraction
            math.nan,
            math.inf,
            -math.inf,
            True,  # a bool is not an int here
            False,
            str(lo),  # a number in a string
            "",
            [lo],
        ]
    elif kind == "string":
        if name.startswith("SystemInformation_") and name != "SystemInformation_MessageFrequency":
            out += ["x" * 129, "bell\x07", "line\nbreak", 5, True, "\ud800"]
        else:
            out += ["", "Bogus", "Med", 1, True, 2.0, "\ud800"]
    elif kind == "string (comma list)":
        out += [1, True, ["eth0"], "\ud800"]
        if name == "NetworkActivity_Devices":
            out += [
                "eth0,a/b",
                "x" * 16,
                "bad name",
                "eth0:1",
                "..",
                ",".join(f"e{i}" for i in range(65)),
            ]
        elif name == "FileSystem_Paths":
            out += ["relative/path", "/etc,var", "/" + "a" * 4096, "/tab\there"]
        else:
            out += ["x" * 129, "ok,ctl\x01", ",".join(str(i) for i in range(1025))]
    elif name == "CollectorsCore_PriorityIntervals":
        out += [
            "",
            "30,120",
            "30,120,1440,2880",
            "a,b,c",
            "0,120,1440",
            "-1,120,1440",
            "120,30,1440",  # High above Medium
            "30,1440,120",
            "1.5,2,3",
            "1e2,200,300",
            "30,120,99999",
            "30,120,99999999999999999999",
            "٣,٤,٥",  # non-ASCII digits
            30,
            [30, 120, 1440],
        ]
    else:
        raise AssertionError(f"{name}: unknown kind {kind!r}")
    return out


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_valid_value_is_taken(name: str) -> None:
    raw, expected = VALID[name]
    s = store()
    before = s.config
    update = s.apply_patch({name: raw, "$version": 3})
    assert typed(name, s.config.value(name)) == expected
    assert s.latest_state == "success" and s.latest_invalid_fields == ()
    assert update.changed_fields == (name,)
    assert update.changed_sections == {FIELDS[name].section}
    assert update.old is before and update.new is s.config
    # Every other property kept its value.
    for other in FIELDS:
        if other != name:
            assert s.config.value(other) == before.value(other)
    # The reported form parses back to the same typed value.
    assert FIELDS[name].parse(s.config.to_twin()[name]) == s.config.value(name)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_invalid_value_is_listed_and_previous_value_stays(name: str) -> None:
    raw, expected = VALID[name]
    s = store()
    s.apply_patch({name: raw})
    assert typed(name, s.config.value(name)) == expected
    good = s.config
    for bad in invalid_values(name):
        update = s.apply_patch({name: bad})
        assert s.latest_invalid_fields == (name,), f"{name} = {bad!r} was taken"
        assert s.latest_state == "failed"
        assert s.config == good, f"{name} = {bad!r} changed the configuration"
        assert not update.changed_fields and not update.changed_sections
        reason = s.invalid_reasons[name]
        assert reason.startswith("twin: ") and "\n" not in reason and len(reason) < 300
    # A later valid value clears it.
    s.apply_patch({name: FIELDS[name].default_json()})
    assert s.latest_invalid_fields == () and s.latest_state == "success"
    assert s.config.value(name) == FIELDS[name].default


@pytest.mark.parametrize("name", sorted(n for n in FIELDS if FIELDS[n].type_doc == "int"))
def test_int_bounds_are_inclusive(name: str) -> None:
    lo, hi = int_range(name)
    s = store()
    for value in (lo, hi):
        s.apply_patch({name: value})
        assert s.config.value(name) == value and s.latest_state == "success"


def test_null_clears_an_invalid_value() -> None:
    s = store()
    s.apply_patch({"Process_CacheSize": -5})
    assert s.latest_invalid_fields == ("Process_CacheSize",)
    s.apply_patch({"Process_CacheSize": None})
    assert s.latest_state == "success"
    assert s.config.process.cache_size == 256


def test_several_invalid_fields_are_sorted_and_cleared_one_by_one() -> None:
    s = store()
    s.apply_patch({"Upload_Format": "xml", "Audit_BacklogLimit": 0, "Bogus_Name": 1})
    assert s.latest_invalid_fields == ("Audit_BacklogLimit", "Bogus_Name", "Upload_Format")
    s.apply_patch({"Upload_Format": "json"})
    still_invalid: tuple[str, ...] = s.latest_invalid_fields  # (mypy kept the first tuple)
    assert still_invalid == ("Audit_BacklogLimit", "Bogus_Name")
    assert s.config.upload.format is UploadFormat.JSON
    s.apply_patch({"Bogus_Name": None, "Audit_BacklogLimit": 128})
    assert s.latest_state == "success"


def test_unknown_names_are_listed_and_bounded() -> None:
    s = store()
    long_name = "N" * 5000
    s.apply_patch({long_name: 1, "process_disabled": True, "": 0})
    names = s.latest_invalid_fields
    assert "process_disabled" in names and "" in names  # names are case-sensitive
    assert any(n.startswith("NNN") and n.endswith("...") and len(n) == 128 for n in names)
    assert s.config == Config.defaults()


def test_non_string_keys_are_listed_not_raised() -> None:
    s = store()
    s.apply_patch({1: True, None: 2, (1, 2): 3, "Process_Disabled": True})
    assert s.latest_invalid_fields == ("1", "an array", "null")  # described, not repr'd
    assert s.config.process.disabled is True
    s.apply_patch({1: None, None: None, (1, 2): None})
    assert s.latest_state == "success"


def test_file_invalid_name_stays_listed_while_the_twin_overrides_it(tmp_path: Path) -> None:
    s = store(tmp_path, json.dumps({"Upload_Format": "xml"}))
    s.apply_patch({"Upload_Format": "json"})
    assert s.config.upload.format is UploadFormat.JSON
    assert s.latest_invalid_fields == ("Upload_Format",)
    assert s.invalid_reasons["Upload_Format"].startswith("file: ")


def test_dollar_keys_are_skipped() -> None:
    s = store()
    s.apply_desired({"$version": 12, "$metadata": {"$lastUpdated": "x"}, "Login_UsePAM": True})
    assert s.latest_state == "success" and s.config.login.use_pam is True


@pytest.mark.parametrize("doc", [None, [], "Process_Disabled", 7, [{"Process_Disabled": True}]])
def test_a_desired_document_that_is_not_an_object(doc: Any) -> None:
    s = store()
    s.apply_patch({"Process_Disabled": True})
    for apply in (s.apply_patch, s.apply_desired):
        apply(doc)
        assert s.latest_invalid_fields == ("$desired",)
        assert s.config.process.disabled is True
    s.apply_patch({})
    assert s.latest_state == "success" and s.config.process.disabled is True


# ---------------------------------------------------------------------------------------------
# Layers: default < file < twin


def test_missing_file_is_defaults(tmp_path: Path) -> None:
    s = store(tmp_path, None)
    assert s.config == Config.defaults() and s.latest_state == "success"


def test_layers_later_wins_and_null_removes_the_override(tmp_path: Path) -> None:
    s = store(tmp_path, json.dumps({"Process_CacheSize": 512, "Upload_Format": "json"}))
    assert s.config.process.cache_size == 512 and s.config.upload.format is UploadFormat.JSON
    s.apply_patch({"Process_CacheSize": 1000})
    assert s.config.process.cache_size == 1000  # twin over file
    assert s.config.upload.format is UploadFormat.JSON  # untouched: the file's
    s.apply_patch({"Process_CacheSize": None})
    assert s.config.process.cache_size == 512  # back to the file's
    s.apply_patch({"Upload_Format": "msgpack"})
    s.apply_patch({"Upload_Format": None})
    assert s.config.upload.format is UploadFormat.JSON
    s.apply_patch({"Login_CacheSize": 300})
    s.apply_patch({"Login_CacheSize": None})
    assert s.config.login.cache_size == 256  # no file value: back to the default


def test_full_document_replaces_the_twin_layer_patch_does_not(tmp_path: Path) -> None:
    s = store(tmp_path, json.dumps({"Process_Mode": 3}))
    s.apply_desired({"Process_Mode": 2, "Login_Disabled": True, "Heartbeat_Disabled": True})
    assert s.config.process.mode is ProcessMode.NETLINK and s.config.login.disabled
    # A patch touches only its names.
    s.apply_patch({"Heartbeat_Disabled": False})
    assert s.config.process.mode is ProcessMode.NETLINK and s.config.login.disabled
    assert not s.config.heartbeat.disabled
    # A full document: absent names revert (Process_Mode to the file's, Login to default).
    update = s.apply_desired({"$version": 9, "Heartbeat_Disabled": True})
    config = s.config  # a new Config (mypy kept the narrowing of the old one)
    assert config.process.mode is ProcessMode.POLLING
    assert not s.config.login.disabled and s.config.heartbeat.disabled
    assert update.changed_sections == {"Process", "Login", "Heartbeat"}


def test_full_document_with_an_invalid_value_keeps_the_last_good_one() -> None:
    s = store()
    s.apply_desired({"Process_CacheSize": 400, "Firewall_Disabled": True})
    s.apply_desired({"Process_CacheSize": "many", "Firewall_Disabled": True})
    assert s.config.process.cache_size == 400
    assert s.latest_invalid_fields == ("Process_CacheSize",)
    # A full document without it: the invalid value is gone from the twin, so is the override.
    s.apply_desired({"Firewall_Disabled": True})
    assert s.config.process.cache_size == 256 and s.latest_state == "success"
    # Invalid in a full document with no earlier twin value: the layer below stays in effect.
    s.apply_desired({"Login_CacheSize": 0})
    assert s.config.login.cache_size == 256 and s.latest_invalid_fields == ("Login_CacheSize",)


def test_file_values_are_validated_per_field(tmp_path: Path) -> None:
    s = store(tmp_path, json.dumps({"Process_CacheSize": 512, "Login_UsePAM": "yes", "Nope": 1}))
    assert s.config.process.cache_size == 512 and s.config.login.use_pam is False
    assert s.latest_invalid_fields == ("Login_UsePAM", "Nope")
    assert s.invalid_reasons["Login_UsePAM"].startswith("file: ")


def test_file_reload_keeps_last_good_file_value_for_an_invalid_field(tmp_path: Path) -> None:
    s = store(tmp_path, json.dumps({"Process_CacheSize": 512}))
    (tmp_path / "config.json").write_text(json.dumps({"Process_CacheSize": -1}))
    update = s.reload_file()
    assert s.config.process.cache_size == 512 and not update.changed
    assert s.latest_invalid_fields == ("Process_CacheSize",)
    (tmp_path / "config.json").write_text(json.dumps({}))
    s.reload_file()
    assert s.config.process.cache_size == 256 and s.latest_state == "success"


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"Process_CacheSize": 512',  # cut while being written
        "[1, 2]",
        '"Process_CacheSize"',
        "null",
        "",
        "\xff\xfe",
        "[" * 100000 + "]" * 100000,  # deeper than the parser's recursion
    ],
)
def test_broken_file_is_listed_by_path_and_last_good_file_layer_stays(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "config.json"
    s = store(tmp_path, json.dumps({"Process_CacheSize": 512, "Login_Disabled": True}))
    s.apply_patch({"Upload_Format": "json"})
    if content == "\xff\xfe":
        path.write_bytes(b"\xff\xfe{")
    else:
        path.write_text(content, encoding="utf-8")
    update = s.reload_file()
    assert s.latest_invalid_fields == (str(path),)
    assert s.invalid_reasons[str(path)].startswith("file: ")
    assert not update.changed
    assert s.config.process.cache_size == 512 and s.config.login.disabled
    assert s.config.upload.format is UploadFormat.JSON  # the twin layer is untouched
    path.write_text(json.dumps({"Process_CacheSize": 600}))
    s.reload_file()
    assert s.latest_state == "success" and s.config.process.cache_size == 600
    assert not s.config.login.disabled


def test_broken_file_at_start_gives_defaults(tmp_path: Path) -> None:
    s = store(tmp_path, "{")
    assert s.config == Config.defaults()
    assert s.latest_invalid_fields == (str(tmp_path / "config.json"),)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.mkdir()  # a directory where the file should be: EISDIR, for root too
    s = ConfigStore(path)
    assert s.latest_invalid_fields == (str(path),)
    assert "cannot read" in s.invalid_reasons[str(path)]
    path.rmdir()
    s.reload_file()  # now missing: no file layer, not an error
    assert s.latest_state == "success"


def test_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"$pad": "x" * (1 << 20)}))
    s = ConfigStore(path)
    assert s.latest_invalid_fields == (str(path),)
    assert "larger than" in s.invalid_reasons[str(path)]


def test_file_removed_reverts_to_defaults(tmp_path: Path) -> None:
    s = store(tmp_path, json.dumps({"Outbox_MaxBytes": 2 << 20}))
    assert s.config.outbox.max_bytes == 2 << 20
    os.unlink(tmp_path / "config.json")
    update = s.reload_file()
    assert s.config.outbox.max_bytes == 16 << 20 and update.changed_sections == {"Outbox"}


def test_microsoft_example_twin_is_accepted() -> None:
    """The desired section of Microsoft's "Configure a micro agent twin" page (values as
    printed there), compat names included: an agent must not report it as failed."""
    desired = {
        "Baseline_Disabled": False,
        "Baseline_MessageFrequency": "Low",
        "Baseline_GroupsDisabled": "",
        "Baseline_ChecksDisabled": "",
        "SystemInformation_Disabled": False,
        "SystemInformation_MessageFrequency": "Low",
        "SBoM_Disabled": False,
        "SBoM_MessageFrequency": "Low",
        "NetworkActivity_Disabled": False,
        "NetworkActivity_MessageFrequency": "Medium",
        "NetworkActivity_Devices": "eth0",
        "NetworkActivity_CacheSize": 256,
        "Process_Disabled": False,
        "Process_MessageFrequency": "Medium",
        "Process_PollingInterval": 100000,
        "Process_Mode": 1,
        "Process_CacheSize": 256,
        "LogCollector_Disabled": False,
        "LogCollector_MessageFrequency": "Low",
        "Heartbeat_Disabled": False,
        "Heartbeat_MessageFrequency": "Low",
        "Login_Disabled": False,
        "Login_MessageFrequency": "Medium",
        "IothubModule_MessageTimeout": 2880,
        "CollectorsCore_PriorityIntervals": "30,120,1440",
    }
    s = store()
    s.apply_desired(desired)
    assert s.latest_state == "success", s.invalid_reasons
    assert s.config.network_activity.devices == ("eth0",)
    assert s.config.changed_sections(Config.defaults()) == {"NetworkActivity"}


# ---------------------------------------------------------------------------------------------
# Change detection: only the sections whose settings changed


def test_changed_sections_name_only_what_changed() -> None:
    s = store()
    update = s.apply_patch({"Process_CacheSize": 256, "Login_Disabled": False})  # defaults
    assert not update.changed and update.changed_sections == frozenset()
    update = s.apply_patch({"NetworkActivity_Devices": "eth0", "Upload_Format": "json"})
    assert update.changed_sections == {"NetworkActivity", "Upload"}
    assert update.changed_collectors == {"NetworkActivity"}
    assert update.changed_fields == ("NetworkActivity_Devices", "Upload_Format")
    # The same list written differently is the same setting.
    update = s.apply_patch({"NetworkActivity_Devices": " eth0 ,eth0,"})
    assert not update.changed


def test_config_is_immutable_and_typed() -> None:
    c = Config.defaults()
    with pytest.raises(AttributeError):
        c.process.cache_size = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        c.upload = c.upload  # type: ignore[misc]
    assert isinstance(c.collectors_core.priority_intervals.minutes(Frequency.MEDIUM), int)
    assert c.collectors_core.priority_intervals.minutes(Frequency.MEDIUM) == 120
    assert c.collector("Process") is c.process
    with pytest.raises(KeyError):
        c.collector("Upload")
    with pytest.raises(KeyError):
        Config.from_values({"Nope": 1})


def test_defaults_are_valid_and_round_trip() -> None:
    c = Config.defaults()
    for name, value in c.to_twin().items():
        assert FIELDS[name].parse(value) == c.value(name)
    assert (
        Config.from_values({n: f.parse(v) for n, f in FIELDS.items() for v in [c.to_twin()[n]]})
        == c
    )


def test_concurrent_patches_and_reads() -> None:
    s = store()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(300):
                s.apply_patch({"Process_CacheSize": 1 + (i * n) % 1000, "Bogus": i})
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(n,)) for n in (1, 7)]
    for t in threads:
        t.start()
    for _ in range(300):
        c = s.config
        assert 1 <= c.process.cache_size <= 1000
    for t in threads:
        t.join()
    assert not errors
    assert s.latest_invalid_fields == ("Bogus",)


# ---------------------------------------------------------------------------------------------
# Malformed patches never raise (Hypothesis)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([10**400, -(10**400), 2**63, 2**64 - 1, 0, -1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["", " ", "\ud800", "true", "High", "eth0,", "30,120,1440", "/", "x" * 500])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
keys = (
    st.sampled_from(sorted(FIELDS)) | st.text(max_size=30) | st.sampled_from(["$version", "$x", ""])
)
patches = st.dictionaries(keys, json_values, max_size=8)


def assert_consistent(s: ConfigStore) -> None:
    c = s.config
    # The effective configuration is always a valid one.
    for name, value in c.to_twin().items():
        assert FIELDS[name].parse(value) == c.value(name)
    assert (s.latest_state == "failed") == bool(s.latest_invalid_fields)
    assert list(s.latest_invalid_fields) == sorted(s.latest_invalid_fields)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patch=patches)
def test_malformed_patch_never_raises(patch: dict[Any, Any]) -> None:
    s = store()
    before = s.config
    s.apply_patch(patch)
    assert_consistent(s)
    for key, value in patch.items():
        if key.startswith("$") or value is None:
            continue
        if key not in FIELDS:
            assert key[:125] in "".join(s.latest_invalid_fields)
            continue
        try:
            expected = FIELDS[key].parse(value)
        except ValueError:
            assert key in s.latest_invalid_fields
            assert s.config.value(key) == before.value(key)
        else:
            assert key not in s.latest_invalid_fields
            assert s.config.value(key) == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.booleans(), patches | json_values), max_size=6))
def test_malformed_sequences_never_raise(steps: list[tuple[bool, Any]]) -> None:
    s = store()
    reported = ReportedState()
    for full, doc in steps:
        (s.apply_desired if full else s.apply_patch)(doc)
        assert_consistent(s)
        doc_out = build_reported(s.config, s.invalid_reasons, {}, {})
        json.dumps(doc_out)  # serialisable (no NaN, no surrogate trouble)
        reported.take(doc_out)
        assert reported.sent == doc_out
    # Whatever happened, a valid full document brings it back to success.
    s.apply_desired({})
    assert s.latest_state == "success" and s.config == Config.defaults()


# ---------------------------------------------------------------------------------------------
# Reported properties


def reported_doc(s: ConfigStore, **kwargs: Any) -> dict[str, Any]:
    collectors = kwargs.pop("collectors", {"Process": CollectorState.running("audit")})
    counters = kwargs.pop("counters", {"collected": {"Process": 12}, "dropped": {"outbox_full": 0}})
    return build_reported(s.config, s.invalid_reasons, collectors, counters, **kwargs)


def test_reported_document() -> None:
    s = store()
    s.apply_patch(
        {"Firewall_Disabled": True, "Process_CacheSize": "x", "Statistics_CacheSize": 512}
    )
    doc = reported_doc(
        s,
        collectors={
            "Process": CollectorState.running(
                "audit-multicast", "audit: owned by auditd, using multicast"
            ),
            "Login": CollectorState.unavailable("no utmp and no audit"),
        },
        outbox_depth=3,
    )
    assert doc["latest_state"] == "failed"
    assert doc["latest_invalid_fields"] == ["Process_CacheSize"]
    assert doc["latest_invalid_reasons"][0].startswith(
        "Process_CacheSize: twin: expected an integer"
    )
    assert doc["Process_CacheSize"] == 256 and doc["Firewall_Disabled"] is True
    assert doc["CollectorsCore_PriorityIntervals"] == "30,120,1440"
    assert "Statistics_CacheSize" not in doc  # compat names change nothing: not reported
    assert doc["collectors"] == {
        "Process": {
            "state": "running",
            "source": "audit-multicast",
            "reason": "audit: owned by auditd, using multicast",
        },
        "Login": {"state": "unavailable", "reason": "no utmp and no audit"},
        "Firewall": {"state": "disabled"},
    }
    assert doc["agent_version"] == __version__ and doc["outbox_depth"] == 3
    assert doc["counters"] == {"collected": {"Process": 12}, "dropped": {"outbox_full": 0}}
    json.dumps(doc)


def test_reported_invalid_list_is_capped() -> None:
    s = store()
    s.apply_patch({f"Junk{i:03}": i for i in range(500)})
    doc = reported_doc(s)
    assert len(doc["latest_invalid_fields"]) == 64
    assert doc["latest_invalid_fields"][-1] == "... and 437 more"
    assert len(doc["latest_invalid_reasons"]) == 64
    assert len(json.dumps(doc)) < 32 * 1024  # IoT Hub's limit on reported properties


def test_reported_keys_are_twin_safe() -> None:
    doc = reported_doc(
        store(),
        collectors={"my.collector $x": CollectorState.running()},
        counters={"dropped": {"reason.with dots": 1}},
    )
    assert "my_collector__x" in doc["collectors"]
    assert doc["counters"] == {"dropped": {"reason_with_dots": 1}}


@pytest.mark.parametrize(
    "counters",
    [{"a": -1}, {"a": True}, {"a": 1.5}, {"a": "1"}, {1: 1}, {"a": {"b": {"c": {"d": 1}}}}],
)
def test_reported_rejects_bad_counters(counters: dict[Any, Any]) -> None:
    with pytest.raises(TypeError):
        build_reported(Config.defaults(), {}, {}, counters)


def test_collector_state_is_checked() -> None:
    with pytest.raises(ValueError):
        CollectorState("sleeping")


def test_reported_state_identical_inputs_give_none() -> None:
    s = store()
    r = ReportedState()
    first = r.take(reported_doc(s))
    assert first == reported_doc(s)  # nothing sent yet: the whole document
    assert r.take(reported_doc(s)) is None
    assert r.patch(reported_doc(s)) is None


def test_reported_state_one_counter_change_gives_only_that_key() -> None:
    s = store()
    r = ReportedState()
    r.take(reported_doc(s))
    patch = r.take(
        reported_doc(s, counters={"collected": {"Process": 13}, "dropped": {"outbox_full": 0}})
    )
    assert patch == {"counters": {"collected": {"Process": 13}}}


def test_reported_state_patch_without_mark_sent_repeats() -> None:
    s = store()
    r = ReportedState()
    r.take(reported_doc(s))
    changed = reported_doc(s, outbox_depth=9)
    assert r.patch(changed) == {"outbox_depth": 9}
    assert r.patch(changed) == {"outbox_depth": 9}  # not sent yet: still pending
    r.mark_sent({"outbox_depth": 9})
    assert r.patch(changed) is None


def test_reported_state_config_change_and_removal() -> None:
    s = store()
    r = ReportedState()
    r.take(reported_doc(s, collectors={"Login": CollectorState.unavailable("no utmp")}))
    s.apply_patch({"Login_Disabled": True, "Process_Mode": 9})
    patch = r.take(reported_doc(s, collectors={}))
    assert patch == {
        "Login_Disabled": True,
        "latest_state": "failed",
        "latest_invalid_fields": ["Process_Mode"],
        "latest_invalid_reasons": ["Process_Mode: twin: 9 is above the maximum 4"],
        "collectors": {"Login": {"state": "disabled", "reason": None}},
    }


def test_reported_state_seeded_from_the_hub_removes_stale_keys() -> None:
    s = store()
    doc = reported_doc(s)
    hub = dict(doc, old_key=1, **{"$version": 4, "$metadata": {}})
    hub["counters"] = {"collected": {"Process": 12, "Gone": 5}, "dropped": {"outbox_full": 0}}
    r = ReportedState(hub)
    assert r.patch(doc) == {"old_key": None, "counters": {"collected": {"Gone": None}}}


def test_reported_state_tells_bool_from_int() -> None:
    r = ReportedState({"a": 1, "b": 1.0, "c": [1]})
    assert r.patch({"a": True, "b": 1, "c": [True]}) == {"a": True, "b": 1, "c": [True]}


json_objects = st.recursive(
    st.dictionaries(
        st.text(max_size=4), st.booleans() | st.integers() | st.text(max_size=4), max_size=4
    ),
    lambda inner: st.dictionaries(
        st.text(max_size=4), inner | st.lists(st.integers(), max_size=3), max_size=4
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(old=json_objects, new=json_objects)
def test_merge_patch_diff_applies_back(old: dict[str, Any], new: dict[str, Any]) -> None:
    patch = merge_patch_diff(old, new)
    assert apply_merge_patch(old, patch) == new
    assert (patch == {}) == (json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# docs/configuration.md agrees with the schema


@pytest.mark.parametrize("document", ["docs/configuration.md", "README.md"])
def test_docs_table_equals_schema(document: str) -> None:
    text = (REPO / document).read_text(encoding="utf-8")
    begin = text.index(TABLE_BEGIN) + len(TABLE_BEGIN)
    end = text.index(TABLE_END)
    assert text[begin:end].strip() == render_table().strip(), (
        f"{document} is stale: run `PYTHONPATH=src python3 -m agent.config docs`"
    )
    assert replace_table(text) == text
    documented = re.findall(r"^\| `([A-Za-z]+_[A-Za-z]+)` \|", text[begin:end], re.MULTILINE)
    assert sorted(documented) == sorted(FIELDS)


def test_docs_table_rows_carry_type_default_and_range() -> None:
    for row in render_table().splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 6 and all(cells), row
        name = cells[0].strip("`")
        assert json.loads(cells[2].strip("`")) == FIELDS[name].default_json()


def test_every_section_attribute_is_one_twin_property_and_nothing_else() -> None:
    # The schema is declared once, on the section dataclasses: each attribute is a property,
    # each property an attribute; a name given twice would hide one of them.
    attrs = [(name, a.name) for name, (_, cls) in SECTIONS.items() for a in fields(cls)]
    assert len(FIELDS) == len(attrs)
    assert sorted((f.section, f.attr) for f in FIELDS.values()) == sorted(attrs)
    assert Config.defaults().values() == {name: f.default for name, f in FIELDS.items()}
