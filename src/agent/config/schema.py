"""The configuration schema: every twin property, its type, default, range and meaning, and
the typed, immutable `Config` built from validated values.

Declared once: each section is a frozen record (the name's prefix: `Process_Mode` ->
`Process`), and each of its attributes carries its twin property in the field's metadata
(`prop()`: the name's suffix, the kind of value, the default, the meaning). Everything else is
derived from those declarations: `FIELDS` (one `Field` per flat twin property name, in
declaration order), the parsing and the reported form, `Config`'s sections and
docs/configuration.md's table (`render_table()`; a test keeps the two equal). Adding a
property is one attribute with its `prop()`.

A field parses a JSON value (as `json.loads` gives it from the twin) into a typed value
or raises `InvalidValue` with a one-line reason, and dumps a typed value back to its twin form
(for the reported properties). A change is found by comparing sections, so the runtime touches
only the collectors whose section changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from enum import Enum, IntEnum
from typing import Any, TypeVar, Union

from agent.limits import DEFAULT_MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES
from agent.record import field, fields, record

# The JSON values a twin carries (what json.loads hands us from the twin's JSON).
Json = Union[None, bool, int, float, str, list[Any], dict[str, Any]]


class InvalidValue(ValueError):
    """A value a field cannot take; the message is the one-line reason."""


class Frequency(str, Enum):
    """How often a collector's events are sent: CollectorsCore_PriorityIntervals gives the
    minutes of each."""

    HIGH = "High"
    MEDIUM = "Medium"
    LOW = "Low"


class ProcessMode(IntEnum):
    """Process_Mode: where process events come from."""

    AUTO = 1  # the richest source available: audit, then the proc connector, then polling
    NETLINK = 2  # the proc connector (cn_proc)
    POLLING = 3  # /proc polled every Process_PollingInterval
    AUDIT = 4  # audit netlink (ours; the Defender micro agent stops at 3)


class UploadFormat(str, Enum):
    MSGPACK = "msgpack"
    JSON = "json"


@record(frozen=True)
class PriorityIntervals:
    """CollectorsCore_PriorityIntervals: minutes between sends of each message frequency."""

    high: int
    medium: int
    low: int

    def minutes(self, frequency: Frequency) -> int:
        if frequency is Frequency.HIGH:
            return self.high
        if frequency is Frequency.MEDIUM:
            return self.medium
        return self.low


# ---------------------------------------------------------------------------------------------
# Describing bad values without echoing them whole (a reason must stay one short line, and
# neither a 1 MB string, a 100,000-digit integer nor a 10,000-deep list may blow up a log).

_PREVIEW = 40


def describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 64:
            return f"an integer of {value.bit_length()} bits"
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if value == "":
            return "an empty string"
        shown = value[:_PREVIEW].encode("utf-8", "backslashreplace").decode("ascii", "replace")
        return "string " + repr(shown) + ("..." if len(value) > _PREVIEW else "")
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    return "a value of type " + type(value).__name__


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"expected {what}, got {describe(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue("not valid Unicode text (lone surrogate)") from None
    return value


def _printable(text: str) -> bool:
    return text.isprintable()


def parse_bool(value: object) -> bool:
    # JSON true/false only: "true", 1 and 0 are a mistake worth reporting, not guessing.
    if not isinstance(value, bool):
        raise InvalidValue(f"expected true or false, got {describe(value)}")
    return value


def parse_int(value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise InvalidValue(f"expected an integer, got {describe(value)}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValue(f"expected an integer, got {describe(value)}")
        if not value.is_integer():
            raise InvalidValue(f"expected an integer, got the fraction {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise InvalidValue(f"expected an integer, got {describe(value)}")
    if value < lo:
        raise InvalidValue(f"{describe(value)} is below the minimum {lo}")
    if value > hi:
        raise InvalidValue(f"{describe(value)} is above the maximum {hi}")
    return value


E = TypeVar("E", bound=Enum)


def parse_choice(value: object, enum: type[E]) -> E:
    names = "/".join(str(member.value) for member in enum)
    text = _text(value, "one of " + names)
    for member in enum:
        # Case does not matter ("low" is Low); the reported form is the canonical one.
        if str(member.value).lower() == text.strip().lower():
            return member
    raise InvalidValue(f"expected one of {names}, got {describe(value)}")


def parse_process_mode(value: object) -> ProcessMode:
    number = parse_int(value, min(ProcessMode), max(ProcessMode))
    return ProcessMode(number)


def parse_override(value: object, max_chars: int) -> str:
    text = _text(value, "a string").strip()
    if len(text) > max_chars:
        raise InvalidValue(f"longer than {max_chars} characters")
    if not _printable(text):
        raise InvalidValue("contains control characters")
    return text


def parse_list(
    value: object, max_items: int, check_item: Callable[[str], str | None]
) -> tuple[str, ...]:
    """A comma list: items stripped, empty items dropped, duplicates dropped (first kept);
    the empty string is the empty list."""
    text = _text(value, "a comma-separated string")
    items: list[str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item or item in items:
            continue
        problem = check_item(item)
        if problem:
            raise InvalidValue(f"item {describe(item)}: {problem}")
        items.append(item)
        if len(items) > max_items:
            raise InvalidValue(f"more than {max_items} items")
    return tuple(items)


IFNAMSIZ = 16


def check_interface(name: str) -> str | None:
    # The kernel's dev_valid_name(): at most IFNAMSIZ-1 bytes, no '/', ':' or white space.
    if len(name.encode("utf-8")) >= IFNAMSIZ:
        return f"an interface name has at most {IFNAMSIZ - 1} bytes"
    if name in (".", "..") or any(c in "/:" or c.isspace() for c in name):
        return "not a valid interface name"
    if not _printable(name):
        return "contains control characters"
    return None


PATH_MAX = 4096


def check_path(path: str) -> str | None:
    if not path.startswith("/"):
        return "not an absolute path"
    if len(path.encode("utf-8")) >= PATH_MAX:
        return f"longer than {PATH_MAX - 1} bytes"
    if not _printable(path):
        return "contains control characters"
    return None


def check_name(max_chars: int) -> Callable[[str], str | None]:
    def check(name: str) -> str | None:
        if len(name) > max_chars:
            return f"longer than {max_chars} characters"
        if not _printable(name):
            return "contains control characters"
        return None

    return check


INTERVAL_MAX_MINUTES = 10080  # a week


def parse_intervals(value: object) -> PriorityIntervals:
    text = _text(value, 'a string "High,Medium,Low" of minutes')
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 3:
        raise InvalidValue(
            f"expected three comma-separated minutes High,Medium,Low, got {describe(value)}"
        )
    minutes: list[int] = []
    for part in parts:
        # Plain decimal digits only: no sign, no fraction, no exponent, no "0x".
        if not part.isascii() or not part.isdigit() or len(part) > 9:
            raise InvalidValue(f"{describe(part)} is not a whole number of minutes")
        number = int(part)
        if not 1 <= number <= INTERVAL_MAX_MINUTES:
            raise InvalidValue(f"{number} minutes is outside 1..{INTERVAL_MAX_MINUTES}")
        minutes.append(number)
    high, medium, low = minutes
    if not high <= medium <= low:
        raise InvalidValue(f"expected High <= Medium <= Low, got {high},{medium},{low}")
    return PriorityIntervals(high, medium, low)


# ---------------------------------------------------------------------------------------------
# Kinds of values and the declaration of a property


def _identity(value: Any) -> Json:
    return value  # type: ignore[no-any-return]


def _enum_value(value: Any) -> Json:
    return value.value  # type: ignore[no-any-return]


def _joined(value: Any) -> Json:
    return ",".join(value)


def _intervals_text(value: Any) -> Json:
    return f"{value.high},{value.medium},{value.low}"


@record(frozen=True)
class Kind:
    """A kind of twin value: how it is parsed, dumped and documented."""

    parse: Callable[[object], Any]  # JSON value -> typed value, or InvalidValue
    dump: Callable[[Any], Json]  # typed value -> JSON value (reported form)
    type_doc: str
    range_doc: str


BOOL = Kind(parse_bool, _identity, "bool", "true, false")


def integer(lo: int, hi: int, unit: str = "") -> Kind:
    def parse(value: object) -> int:
        return parse_int(value, lo, hi)

    return Kind(parse, _identity, "int", f"{lo}..{hi}" + (f" {unit}" if unit else ""))


def choice(enum: type[Enum]) -> Kind:
    def parse(value: object) -> Any:
        return parse_choice(value, enum)

    return Kind(parse, _enum_value, "string", ", ".join(str(m.value) for m in enum))


def comma_list(max_items: int, check: Callable[[str], str | None], range_doc: str) -> Kind:
    def parse(value: object) -> tuple[str, ...]:
        return parse_list(value, max_items, check)

    return Kind(parse, _joined, "string (comma list)", range_doc)


OVERRIDE_MAX_CHARS = 128


def _parse_override(value: object) -> str:
    return parse_override(value, OVERRIDE_MAX_CHARS)


OVERRIDE = Kind(_parse_override, _identity, "string",
                f"0..{OVERRIDE_MAX_CHARS} printable characters")
INTERVALS = Kind(
    parse_intervals, _intervals_text, 'string "High,Medium,Low"',
    f"three whole minutes, each 1..{INTERVAL_MAX_MINUTES}, High <= Medium <= Low")
PROCESS_MODE = Kind(parse_process_mode, _enum_value, "int",
                    "1 Auto, 2 Netlink, 3 Polling, 4 Audit")
FREQUENCY = choice(Frequency)


@record(frozen=True)
class PerSection:
    """A default that depends on the section (an attribute of a base shared by sections)."""

    defaults: Mapping[str, Any]


@record(frozen=True)
class Prop:
    """The twin property of one section attribute. Its name is "{section}_{suffix}" unless
    `name` gives it whole (the Compat section keeps other prefixes); "{section}" in the
    meaning is the section's name."""

    suffix: str
    kind: Kind
    default: Any  # typed, or PerSection
    meaning: str
    name: str | None = None


def prop(suffix: str, kind: Kind, default: Any, meaning: str, *, name: str | None = None
         ) -> dict[str, Prop]:
    """The metadata of a section attribute that is a twin property:
    `attr: type = field(metadata=prop(...))`."""
    return {"prop": Prop(suffix, kind, default, meaning, name)}


@record(frozen=True)
class Field:
    name: str  # the twin property name
    section: str  # a key of SECTIONS
    attr: str  # the attribute of the section's record
    default: Any  # typed
    parse: Callable[[object], Any]  # JSON value -> typed value, or InvalidValue
    dump: Callable[[Any], Json]  # typed value -> JSON value (reported form)
    type_doc: str
    range_doc: str
    meaning: str

    def default_json(self) -> Json:
        return self.dump(self.default)


# ---------------------------------------------------------------------------------------------
# Sections: one frozen record per name prefix, each attribute a twin property.

# Defaults of MessageFrequency: the Defender for IoT micro agent's documented defaults
# (Process, NetworkActivity and Login Medium; the rest Low); ListeningPorts, LocalUsers and
# Firewall are ours: listening ports change with services, so Medium; accounts and rules
# rarely change, so Low.
_FREQUENCY_DEFAULTS: dict[str, Frequency] = {
    "Process": Frequency.MEDIUM,
    "NetworkActivity": Frequency.MEDIUM,
    "Login": Frequency.MEDIUM,
    "FileSystem": Frequency.LOW,
    "SystemInformation": Frequency.LOW,
    "Baseline": Frequency.LOW,
    "SBoM": Frequency.LOW,
    "Heartbeat": Frequency.LOW,
    "ListeningPorts": Frequency.MEDIUM,
    "LocalUsers": Frequency.LOW,
    "Firewall": Frequency.LOW,
    "Statistics": Frequency.LOW,
    "Peripheral": Frequency.LOW,
    "LogCollector": Frequency.LOW,
}

CACHE_SIZE_DEFAULT = 256
CACHE_SIZE_MAX = 65536


@record(frozen=True)
class CollectorsCoreConfig:
    priority_intervals: PriorityIntervals = field(metadata=prop(
        "PriorityIntervals", INTERVALS, PriorityIntervals(30, 120, 1440),
        "Minutes between sends of High, Medium and Low frequency collectors' events."))


@record(frozen=True)
class IothubModuleConfig:
    message_timeout_minutes: int = field(metadata=prop(
        "MessageTimeout", integer(1, 43200, "minutes"), 2880,
        "A batch not sent within this time is dropped from the outbox (counted as dropped, "
        "reason message_timeout)."))


@record(frozen=True)
class CollectorConfig:
    """What every collector has."""

    disabled: bool = field(metadata=prop("Disabled", BOOL, False, "Stops the {section} collector."))
    message_frequency: Frequency = field(metadata=prop(
        "MessageFrequency", FREQUENCY, PerSection(_FREQUENCY_DEFAULTS),
        "Which priority interval sends {section} events."))


@record(frozen=True)
class EventCollectorConfig(CollectorConfig):
    """A collector that aggregates events between sends keeps at most cache_size entries."""

    cache_size: int = field(metadata=prop(
        "CacheSize", integer(1, CACHE_SIZE_MAX, "entries"), CACHE_SIZE_DEFAULT,
        "{section} entries (after aggregation) kept between sends; past it the oldest is "
        "dropped and counted."))


@record(frozen=True)
class ProcessConfig(EventCollectorConfig):
    mode: ProcessMode = field(metadata=prop(
        "Mode", PROCESS_MODE, ProcessMode.AUTO,
        "Process event source. Auto: audit, else the proc connector, else polling /proc; "
        "Netlink: the proc connector; Audit: audit netlink."))
    polling_interval_us: int = field(metadata=prop(
        "PollingInterval", integer(10000, 60000000, "microseconds"), 100000,
        "How often /proc is scanned in Polling mode."))


@record(frozen=True)
class NetworkActivityConfig(EventCollectorConfig):
    devices: tuple[str, ...] = field(metadata=prop(  # empty: every interface
        "Devices", comma_list(64, check_interface, "0..64 interface names"), (),
        'Interfaces whose connections are reported; "" (the default) watches every '
        "interface."))
    packet_buffer_size: int = field(metadata=prop(
        "PacketBufferSize", integer(1, 1 << 30, "bytes"), 262144,
        "Receive ring of the DNS capture (dns events, host on conn and net): rounded down to "
        "64 KiB blocks, clamped to 2..1024 blocks (the state says when it was)."))


@record(frozen=True)
class LoginConfig(EventCollectorConfig):
    use_pam: bool = field(metadata=prop(
        "UsePAM", BOOL, False,
        "true: logins from audit's PAM records (USER_LOGIN, USER_AUTH, USER_START; needs "
        "audit); false: from utmp, wtmp and btmp."))


@record(frozen=True)
class FileSystemConfig(EventCollectorConfig):
    paths: tuple[str, ...] = field(metadata=prop(
        "Paths", comma_list(64, check_path, "0..64 absolute paths"), (),
        "Paths watched with inotify (a path cannot contain a comma)."))
    recursive: bool = field(metadata=prop(
        "Recursive", BOOL, True, "Also watch every directory under each path."))


def _override(suffix: str, what: str) -> dict[str, Prop]:
    return prop(suffix, OVERRIDE, "",
                f'Reported as the {what} instead of the detected one; "" detects it.')


@record(frozen=True)
class SystemInformationConfig(CollectorConfig):
    # Empty: detect (DMI, device tree, os-release); else report this text instead.
    hardware_vendor: str = field(metadata=_override("HardwareVendor", "hardware vendor"))
    hardware_model: str = field(metadata=_override("HardwareModel", "hardware model"))
    hardware_serial_number: str = field(
        metadata=_override("HardwareSerialNumber", "hardware serial number"))
    firmware_vendor: str = field(metadata=_override("FirmwareVendor", "firmware vendor"))
    firmware_version: str = field(metadata=_override("FirmwareVersion", "firmware version"))


@record(frozen=True)
class BaselineConfig(CollectorConfig):
    groups_disabled: tuple[str, ...] = field(metadata=prop(
        "GroupsDisabled", comma_list(256, check_name(128), "0..256 names of 1..128 characters"),
        (), "Baseline check groups not run."))
    checks_disabled: tuple[str, ...] = field(metadata=prop(
        "ChecksDisabled", comma_list(1024, check_name(128), "0..1024 IDs of 1..128 characters"),
        (), "Baseline check IDs not run."))


@record(frozen=True)
class UploadConfig:
    format: UploadFormat = field(metadata=prop(
        "Format", choice(UploadFormat), UploadFormat.MSGPACK,
        "Encoding of uploaded messages: msgpack (application/msgpack) or JSON "
        "(application/json, utf-8)."))
    max_message_bytes: int = field(metadata=prop(
        "MaxMessageBytes", integer(MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES, "bytes"),
        DEFAULT_MAX_MESSAGE_BYTES,
        "Largest message sent to IoT Hub; batches are packed towards multiples of 4 KiB (the "
        "billing unit). The maximum leaves 8 KiB of IoT Hub's 256 KiB for properties."))


@record(frozen=True)
class OutboxConfig:
    max_bytes: int = field(metadata=prop(
        "MaxBytes", integer(1 << 20, 4 << 30, "bytes"), 16 << 20,
        "Disk the outbox may use; when full, the lowest priority, oldest batches are dropped "
        "and counted (reason outbox_full)."))
    checkpoint_seconds: int = field(metadata=prop(
        "CheckpointSeconds", integer(0, 3600, "seconds"), 10,
        "Events waiting for their priority interval reach the data directory at most this "
        "long after they were collected, so that a crash or kill -9 loses at most this "
        "window; the file is rewritten only when something changed. 0: no checkpoints "
        "(a crash loses up to a whole interval; for flash that must not be written). See "
        "docs/outbox.md, Checkpoints."))


@record(frozen=True)
class AuditConfig:
    own_if_free: bool = field(metadata=prop(
        "OwnIfFree", BOOL, True,
        "Become the kernel audit owner when no process (auditd) is; else, and always when "
        "auditd runs, read audit's multicast group."))
    backlog_limit: int = field(metadata=prop(
        "BacklogLimit", integer(64, 1048576, "records"), 8192,
        "Kernel audit backlog set while the agent owns audit (the previous value is restored "
        "on exit)."))
    receive_buffer_bytes: int = field(metadata=prop(
        "ReceiveBufferBytes", integer(16 << 10, 256 << 20, "bytes"), 4 << 20,
        "Receive buffer of the agent's audit socket (ours). With the backlog it is what "
        "holds audit records while the agent is busy or stopped; beyond both, records are "
        "lost and counted (Audit.kernel_lost), never waited for."))
    exec_paths: bool = field(metadata=prop(
        "ExecPaths", BOOL, False,
        "Ask the kernel for the PATH records of execs: the `paths` key of exec events (name, "
        "inode and mode of the program and its interpreter). Off, the audit owner has the "
        "kernel leave them out, a third of an exec's records, unless FileSystem watches paths "
        "(docs/sources/audit-netlink.md, Records asked for)."))


_COMPAT = "Accepted for Defender for IoT micro agent twins; no effect here."


@record(frozen=True)
class CompatConfig:
    """Properties of the Defender for IoT micro agent this agent has no use for. They are
    accepted (and type-checked) so that a twin written for that agent does not report
    "failed"; they change nothing. Their names keep that agent's prefixes."""

    statistics_cache_size: int = field(metadata=prop(
        "", integer(1, CACHE_SIZE_MAX), 256, _COMPAT, name="Statistics_CacheSize"))


# The collectors, in the order the docs list them.
COLLECTORS: tuple[str, ...] = (
    "Process",
    "NetworkActivity",
    "Login",
    "FileSystem",
    "SystemInformation",
    "Baseline",
    "SBoM",
    "Heartbeat",
    "ListeningPorts",
    "LocalUsers",
    "Firewall",
    "Statistics",
    "Peripheral",
    "LogCollector",
)

# section name -> (Config attribute, section class), in the order of the twin's properties.
SECTIONS: dict[str, tuple[str, type]] = {
    "CollectorsCore": ("collectors_core", CollectorsCoreConfig),
    "IothubModule": ("iothub_module", IothubModuleConfig),
    "Process": ("process", ProcessConfig),
    "NetworkActivity": ("network_activity", NetworkActivityConfig),
    "Login": ("login", LoginConfig),
    "FileSystem": ("file_system", FileSystemConfig),
    "SystemInformation": ("system_information", SystemInformationConfig),
    "Baseline": ("baseline", BaselineConfig),
    "SBoM": ("sbom", CollectorConfig),
    "Heartbeat": ("heartbeat", CollectorConfig),
    "ListeningPorts": ("listening_ports", CollectorConfig),
    "LocalUsers": ("local_users", CollectorConfig),
    "Firewall": ("firewall", CollectorConfig),
    "Statistics": ("statistics", CollectorConfig),
    "Peripheral": ("peripheral", EventCollectorConfig),
    "LogCollector": ("log_collector", CollectorConfig),
    "Upload": ("upload", UploadConfig),
    "Outbox": ("outbox", OutboxConfig),
    "Audit": ("audit", AuditConfig),
    "Compat": ("compat", CompatConfig),
}

EVENT_COLLECTORS: tuple[str, ...] = tuple(
    name for name in COLLECTORS if issubclass(SECTIONS[name][1], EventCollectorConfig))


def _section_fields(section: str, cls: type) -> list[Field]:
    out: list[Field] = []
    for attr in fields(cls):
        spec: Prop = attr.metadata["prop"]
        default = spec.default
        if isinstance(default, PerSection):
            default = default.defaults[section]
        out.append(Field(
            spec.name or f"{section}_{spec.suffix}", section, attr.name, default,
            spec.kind.parse, spec.kind.dump, spec.kind.type_doc, spec.kind.range_doc,
            spec.meaning.replace("{section}", section)))
    return out


FIELDS: dict[str, Field] = {
    f.name: f for name, (_, cls) in SECTIONS.items() for f in _section_fields(name, cls)
}


# ---------------------------------------------------------------------------------------------
# The configuration


@record(frozen=True)
class Config:
    """The effective configuration: typed, validated, immutable. Build it with
    `Config.defaults()` or `Config.from_values()`; change it only by building a new one."""

    collectors_core: CollectorsCoreConfig
    iothub_module: IothubModuleConfig
    process: ProcessConfig
    network_activity: NetworkActivityConfig
    login: LoginConfig
    file_system: FileSystemConfig
    system_information: SystemInformationConfig
    baseline: BaselineConfig
    sbom: CollectorConfig
    heartbeat: CollectorConfig
    listening_ports: CollectorConfig
    local_users: CollectorConfig
    firewall: CollectorConfig
    statistics: CollectorConfig
    peripheral: EventCollectorConfig
    log_collector: CollectorConfig
    upload: UploadConfig
    outbox: OutboxConfig
    audit: AuditConfig
    compat: CompatConfig

    @classmethod
    def defaults(cls) -> Config:
        return cls.from_values({})

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Config:
        """Typed values by twin name (as Field.parse returns them); absent names take the
        default. The values are trusted: validate with Field.parse first."""
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise KeyError(f"not configuration properties: {sorted(unknown)}")
        per_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for f in FIELDS.values():
            per_section[f.section][f.attr] = values.get(f.name, f.default)
        built = {
            attr: section_cls(**per_section[name]) for name, (attr, section_cls) in SECTIONS.items()
        }
        return cls(**built)

    def section(self, name: str) -> Any:
        """The section record of a name prefix ("Process", "Upload", ...)."""
        return getattr(self, SECTIONS[name][0])

    def collector(self, name: str) -> CollectorConfig:
        if name not in COLLECTORS:
            raise KeyError(f"not a collector: {name!r}")
        section: CollectorConfig = self.section(name)
        return section

    def value(self, name: str) -> Any:
        """The typed value of one twin property."""
        f = FIELDS[name]
        return getattr(self.section(f.section), f.attr)

    def values(self) -> dict[str, Any]:
        return {name: self.value(name) for name in FIELDS}

    def to_twin(self) -> dict[str, Json]:
        """Every property in its twin form, flat, in schema order (the reported
        configuration)."""
        return {name: f.dump(self.value(name)) for name, f in FIELDS.items()}

    def changed_sections(self, old: Config) -> frozenset[str]:
        """Section names ("Process", "Upload", ...) whose settings differ from `old`: the
        runtime restarts or retunes only these."""
        return frozenset(name for name in SECTIONS if self.section(name) != old.section(name))

    def changed_collectors(self, old: Config) -> frozenset[str]:
        return frozenset(name for name in self.changed_sections(old) if name in COLLECTORS)

    def changed_fields(self, old: Config) -> tuple[str, ...]:
        return tuple(name for name in FIELDS if self.value(name) != old.value(name))


# ---------------------------------------------------------------------------------------------
# The documentation table

TABLE_BEGIN = "<!-- BEGIN GENERATED: python3 -m agent.config docs -->"
TABLE_END = "<!-- END GENERATED -->"

_TOUCHES: dict[str, str] = {
    "CollectorsCore": "send schedule of every collector",
    "IothubModule": "outbox, uplink",
    "Upload": "uplink (message encoding and size)",
    "Outbox": "outbox",
    "Audit": "audit source (Process, NetworkActivity, Login)",
    "Compat": "nothing",
}


def touches(f: Field) -> str:
    if f.section in COLLECTORS:
        return f"{f.section} collector"
    return _TOUCHES[f.section]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table(rows: Iterable[Field] | None = None) -> str:
    """The markdown table of every property, as docs/configuration.md holds it."""
    import json

    lines = [
        "| Property | Type | Default | Range | Meaning | Touches |",
        "|---|---|---|---|---|---|",
    ]
    for f in FIELDS.values() if rows is None else rows:
        default = json.dumps(f.default_json())
        lines.append(
            "| "
            + " | ".join(
                _cell(cell)
                for cell in (
                    f"`{f.name}`",
                    f.type_doc,
                    f"`{default}`",
                    f.range_doc,
                    f.meaning,
                    touches(f),
                )
            )
            + " |"
        )
    return "\n".join(lines) + "\n"
