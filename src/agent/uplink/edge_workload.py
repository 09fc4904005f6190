"""The IoT Edge runtime's workload API, for an agent that runs as an Edge module: HTTP over the
unix socket $IOTEDGE_WORKLOADURI ("unix:///var/run/iotedge/workload.sock").

- POST /modules/<module>/genid/<generation>/sign?api-version=<IOTEDGE_APIVERSION> with
  {"keyId": "primary", "algo": "HMACSHA256", "data": base64(text)} answers {"digest": base64
  signature}: the signature of each SAS token (the module's key never leaves the runtime);
- GET /trust-bundle?api-version=<...> answers {"certificate": "<PEM>"}: the CA the module
  trusts for its Edge hub ($IOTEDGE_GATEWAYHOSTNAME).

http.client over an AF_UNIX socket: nothing else is needed for two small requests.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import urllib.parse
from collections.abc import Mapping
from typing import Any

from agent.uplink.identity import IdentityError

TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 1024 * 1024  # a trust bundle is a few kilobytes


class WorkloadError(Exception):
    """The workload API could not be reached or did not answer as expected."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class WorkloadApi:
    """The workload API that the environment names (agent.uplink.identity.EDGE_ENV)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        uri = environ["IOTEDGE_WORKLOADURI"]
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme != "unix" or not parts.path:
            raise IdentityError(f"$IOTEDGE_WORKLOADURI {uri[:80]!r}: only unix:// sockets")
        self.socket_path = parts.path
        self.module_id = environ["IOTEDGE_MODULEID"]
        self.generation_id = environ["IOTEDGE_MODULEGENERATIONID"]
        self.api_version = environ["IOTEDGE_APIVERSION"]

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        query = urllib.parse.urlencode({"api-version": self.api_version})
        conn = _UnixConnection(self.socket_path, TIMEOUT_S)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {} if data is None else {"Content-Type": "application/json"}
            conn.request(method, f"{path}?{query}", body=data, headers=headers)
            answer = conn.getresponse()
            raw = answer.read(MAX_ANSWER_BYTES + 1)
        except (OSError, http.client.HTTPException) as err:
            raise WorkloadError(f"IoT Edge workload API {self.socket_path}: {method} {path}: "
                                f"{type(err).__name__}: {err}") from err
        finally:
            conn.close()
        if answer.status != 200:
            detail = raw[:200].decode("utf-8", "replace")
            raise WorkloadError(f"IoT Edge workload API: {method} {path}: status {answer.status}"
                                f" {detail}")
        if len(raw) > MAX_ANSWER_BYTES:
            raise WorkloadError(f"IoT Edge workload API: {method} {path}: answer too long")
        try:
            return json.loads(raw)
        except ValueError as err:
            raise WorkloadError(f"IoT Edge workload API: {method} {path}: not JSON") from err

    def sign(self, text: str) -> str:
        """The base64 HMAC-SHA256 of text under the module's key."""
        module = urllib.parse.quote(self.module_id, safe="")
        generation = urllib.parse.quote(self.generation_id, safe="")
        answer = self._call("POST", f"/modules/{module}/genid/{generation}/sign",
                            {"keyId": "primary", "algo": "HMACSHA256",
                             "data": base64.b64encode(text.encode("utf-8")).decode()})
        digest = answer.get("digest") if isinstance(answer, dict) else None
        if not isinstance(digest, str) or not digest:
            raise WorkloadError("IoT Edge workload API: sign: no digest in the answer")
        return digest

    def trust_bundle(self) -> str:
        """The PEM CA certificates for the Edge hub."""
        answer = self._call("GET", "/trust-bundle")
        pem = answer.get("certificate") if isinstance(answer, dict) else None
        if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
            raise WorkloadError("IoT Edge workload API: trust-bundle: no certificate")
        return pem
