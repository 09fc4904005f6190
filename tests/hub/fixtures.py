"""pytest fixtures of the IoT Hub stand-in. tests/conftest.py imports them:

    from hub.fixtures import hub_certs, iothub, iothub2, iothub_session, iothub2_session  # noqa: E402,F401

- hub_certs (session): the throwaway CA, server and client certificates.
- iothub (function): the Hub on 127.0.0.1:8883 (GatewayHostName=localhost); reset before each
  test (twin and telemetry empty, versions 1), started again if a test left it stopped.
- iothub2 (function): a second Hub on 127.0.0.2:8883 (GatewayHostName=127.0.0.2), for a test
  that needs two identities connected at once (twin topics carry no identity).
The session-scoped iothub_session / iothub2_session hold the processes; tests use the
function-scoped ones.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .broker import BrokerError, Certificates
from .hub import Hub


def _require(binary: str, package: str) -> None:
    if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
        # Imported here, not at the top: tests/conftest.py imports this module while it is
        # itself being imported.
        from conftest import skip_unless_ci

        skip_unless_ci(f"{binary} is not installed (apt-get install {package})")


@pytest.fixture(scope="session")
def hub_certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    _require("openssl", "openssl")
    return Certificates(tmp_path_factory.mktemp("hub-certs"))


def _session_hub(certs: Certificates, host: str, workdir: Path) -> Iterator[Hub]:
    _require("mosquitto", "mosquitto")
    hub = Hub(certs, host=host, workdir=workdir)
    try:
        hub.start()
    except BrokerError:
        hub.close()
        raise
    try:
        yield hub
    finally:
        hub.close()


def _fresh(hub: Hub) -> Hub:
    if not hub.running:
        hub.start()
    hub.reset(sessions=True)
    return hub


@pytest.fixture(scope="session")
def iothub_session(
    hub_certs: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hub]:
    yield from _session_hub(hub_certs, "127.0.0.1", tmp_path_factory.mktemp("hub-1"))


@pytest.fixture(scope="session")
def iothub2_session(
    hub_certs: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hub]:
    yield from _session_hub(hub_certs, "127.0.0.2", tmp_path_factory.mktemp("hub-2"))


@pytest.fixture
def iothub(iothub_session: Hub) -> Hub:
    return _fresh(iothub_session)


@pytest.fixture
def iothub2(iothub2_session: Hub) -> Hub:
    return _fresh(iothub2_session)
