"""Configuration from the module twin: the schema of every property (schema.py), the layers
defaults < local file < twin and their validation (store.py), and the reported properties
(reported.py). docs/configuration.md documents every property; its table is generated from
schema.py by `python3 -m agent.config docs`.

    store = ConfigStore(args.config)            # defaults + /etc/iot-micro-agent/config.json
    update = store.apply_desired(twin["desired"])  # on connect: the twin layer, whole
    update = store.apply_patch(patch)           # on a desired-properties patch
    update = store.reload_file()                # on SIGHUP
    for name in update.changed_sections: ...    # touch only what changed
    reported = ReportedState(twin["reported"])
    patch = reported.patch(build_reported(store.config, store.invalid_reasons, states, counters))
"""

from agent.config.reported import (
    CollectorState,
    ReportedState,
    apply_merge_patch,
    build_reported,
    merge_patch_diff,
)
from agent.config.schema import (
    COLLECTORS,
    EVENT_COLLECTORS,
    FIELDS,
    SECTIONS,
    AuditConfig,
    BaselineConfig,
    CollectorConfig,
    CollectorsCoreConfig,
    CompatConfig,
    Config,
    EventCollectorConfig,
    Field,
    FileSystemConfig,
    Frequency,
    InvalidValue,
    IothubModuleConfig,
    LoginConfig,
    NetworkActivityConfig,
    OutboxConfig,
    PriorityIntervals,
    ProcessConfig,
    ProcessMode,
    SystemInformationConfig,
    UploadConfig,
    UploadFormat,
    render_table,
)
from agent.config.store import (
    DEFAULT_CONFIG_PATH,
    LATEST_FAILED,
    LATEST_SUCCESS,
    ConfigStore,
    ConfigUpdate,
    Layer,
)

__all__ = [
    "COLLECTORS",
    "DEFAULT_CONFIG_PATH",
    "EVENT_COLLECTORS",
    "FIELDS",
    "LATEST_FAILED",
    "LATEST_SUCCESS",
    "SECTIONS",
    "AuditConfig",
    "BaselineConfig",
    "CollectorConfig",
    "CollectorState",
    "CollectorsCoreConfig",
    "CompatConfig",
    "Config",
    "ConfigStore",
    "ConfigUpdate",
    "EventCollectorConfig",
    "Field",
    "FileSystemConfig",
    "Frequency",
    "InvalidValue",
    "IothubModuleConfig",
    "Layer",
    "LoginConfig",
    "NetworkActivityConfig",
    "OutboxConfig",
    "PriorityIntervals",
    "ProcessConfig",
    "ProcessMode",
    "ReportedState",
    "SystemInformationConfig",
    "UploadConfig",
    "UploadFormat",
    "apply_merge_patch",
    "build_reported",
    "merge_patch_diff",
    "render_table",
]
