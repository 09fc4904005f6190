"""The local default (no IoT Hub) never loads what only a hub needs (paho, PySocks, ssl, the
uplink's MQTT client), and nothing loads the IoT Hub SDK (the agent speaks IoT Hub's MQTT
itself; azure-iot-device is a test and benchmark peer): each is megabytes of RSS on a device that does not use them
(docs/performance.md, "Memory, start-up and wake-ups").

`micro-agent run` is started in a subprocess as far as its loop: everything the command
imports and builds (configuration, outbox, collectors, the uplink) happens for real; only
Agent.run is replaced by one that lists sys.modules and returns, so the test needs neither
root nor the kernel's audit. With a connection string configured, the same run does load
paho and the uplink's client: the check can fail."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.uplink.identity import DEFAULT_CONNECTION_STRING_FILE

# The modules the local default must not load, by top-level package or module name: the SDK
# and what it brings, and ssl (OpenSSL: about 4 MB RSS; only a hub's TLS needs it).
HUB_ONLY = ("azure", "paho", "requests", "urllib3", "socks", "deprecation", "janus", "ssl", "_ssl")
# What the local default used to load for a job it does not do, or did with a large module
# (docs/performance.md, "What the agent no longer loads"): pyroute2 (SystemInformation reads
# rtnetlink itself), hashlib and hmac (OpenSSL's libcrypto: DPS group keys only), base64 (hub
# and DPS keys), shutil with bz2 and lzma (argparse's terminal width, SBoM's rpm look-up),
# subprocess (a gatherer child, rpm), ctypes (setns for a named namespace only), queue with
# heapq (the loop's calls from other threads are a deque), zlib (CRC-32 is binascii's),
# dataclasses with inspect, ast and dis (the agent's classes are agent.record's).
NOT_IN_THE_LOCAL_DEFAULT = ("pyroute2", "hashlib", "_hashlib", "hmac", "base64", "shutil",
                            "bz2", "lzma", "subprocess", "ctypes", "queue", "heapq", "zlib",
                            "dataclasses", "inspect", "ast", "dis")

# Agent.run replaced: list the modules loaded by then and return. IotHubUplink.attach
# replaced: it would connect. Neither import below loads anything the run would not: they
# are done inside the replacement, after the command's own imports.
SCRIPT = r"""
import json, sys

def modules_then_return(self):
    print(json.dumps(sorted(sys.modules)), flush=True)
    return 0

def no_attach(self, agent):
    pass

import agent.pipeline
agent.pipeline.Agent.run = modules_then_return
if sys.argv[1] == "hub":
    import agent.uplink.iothub
    agent.uplink.iothub.IotHubUplink.attach = no_attach
from agent.cli import main
sys.exit(main(sys.argv[2:]))
"""


def loaded_by_run(tmp_path: Path, *, hub: bool) -> set[str]:
    data, config = tmp_path / "data", tmp_path / "config.json"
    config.write_text("{}")  # the defaults: every collector on
    args = ["run", "--data-dir", str(data), "--config", str(config), "--log-level", "warning"]
    if hub:
        cs_file = tmp_path / "connection_string"
        key = base64.b64encode(b"k" * 32).decode()
        cs_file.write_text(f"HostName=lazy.azure-devices.net;DeviceId=dev;ModuleId=mod;"
                           f"SharedAccessKey={key}\n")
        cs_file.chmod(0o600)
        args += ["--connection-string-file", str(cs_file)]
    elif Path(DEFAULT_CONNECTION_STRING_FILE).exists():
        pytest.skip(f"{DEFAULT_CONNECTION_STRING_FILE} exists: this machine has no local default")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTHUB_")}
    # -S and this process's module path: the modules of the agent alone, without what the
    # machine's start-up (.pth) files import (one on a test machine loads shutil).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())
    done = subprocess.run([sys.executable, "-S", "-c", SCRIPT, "hub" if hub else "local", *args],
                          check=False, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".", 1)[0] for name in modules}


def test_the_local_default_loads_no_hub_sdk(tmp_path: Path) -> None:
    modules = loaded_by_run(tmp_path, hub=False)
    # The run got as far as its loop: the agent, its collectors and the local uplink.
    assert {"agent.pipeline", "agent.collectors", "agent.uplink.files"} <= modules
    assert not top_level(modules) & set(HUB_ONLY), sorted(top_level(modules) & set(HUB_ONLY))
    assert "agent.uplink.iothub" not in modules and "agent.uplink.connection" not in modules
    unneeded = top_level(modules) & set(NOT_IN_THE_LOCAL_DEFAULT)
    assert not unneeded, sorted(unneeded)


def test_a_configured_hub_loads_paho_and_never_the_sdk(tmp_path: Path) -> None:
    modules = loaded_by_run(tmp_path, hub=True)
    assert {"paho", "agent.uplink.iothub", "agent.uplink.mqtt"} <= modules
    assert not top_level(modules) & {"azure", "requests", "urllib3", "deprecation", "janus"}
