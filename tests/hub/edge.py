"""A stand-in for the IoT Edge runtime's workload API, on a unix socket: what the SDK's
IoTHubModuleClient.create_from_edge_environment() asks (azure-iot-device 2.14.0,
iothub/edge_hsm.py):

- GET  /trust-bundle?api-version=V -> {"certificate": "<PEM>"}: the CA the module trusts for
  its Edge hub (here the stand-in's CA, so the stand-in's gate is the Edge hub);
- POST /modules/{module}/genid/{generation}/sign?api-version=V with
  {"keyId": "primary", "algo": "HMACSHA256", "data": base64(text)}
  -> {"digest": base64(HMAC-SHA256(module key, text))}: the signature of each SAS token.

The module's key is the stand-in hub's key for that identity, so the gate checks the token as
it checks any module's. Requests are recorded; a wrong generation id gets 404, as from the
real runtime for a module that was redeployed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import os
import socketserver
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class WorkloadApi:
    """Serve the workload API on `socket_path` until close()."""

    def __init__(self, socket_path: Path, trust_bundle: str, module_key: Callable[[str], str | None],
                 generation_id: str) -> None:
        self.socket_path = socket_path
        self.trust_bundle = trust_bundle
        self.module_key = module_key
        self.generation_id = generation_id
        self.requests: list[tuple[str, str]] = []  # (method, path without the query)
        self._lock = threading.Lock()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet; requests are recorded

            def address_string(self) -> str:
                return "unix"

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                api._record("GET", path)
                if path == "/trust-bundle":
                    self._answer(200, {"certificate": api.trust_bundle})
                else:
                    self._answer(404, {"message": f"no {path}"})

            def do_POST(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                api._record("POST", path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 64 * 1024))
                parts = path.strip("/").split("/")
                if len(parts) != 5 or parts[0] != "modules" or parts[2] != "genid" or parts[4] != "sign":
                    self._answer(404, {"message": f"no {path}"})
                    return
                module = urllib.parse.unquote(parts[1])
                key = api.module_key(module)
                if key is None or parts[3] != api.generation_id:
                    self._answer(404, {"message": f"module {module} generation {parts[3]} unknown"})
                    return
                try:
                    request = json.loads(body)
                    data = base64.b64decode(request["data"])
                    if request.get("algo") != "HMACSHA256" or request.get("keyId") != "primary":
                        raise ValueError(f"algo {request.get('algo')}, keyId {request.get('keyId')}")
                except (ValueError, KeyError, TypeError) as error:
                    self._answer(400, {"message": str(error)})
                    return
                digest = hmac.new(base64.b64decode(key), data, hashlib.sha256).digest()
                self._answer(200, {"digest": base64.b64encode(digest).decode()})

        if socket_path.exists():
            socket_path.unlink()
        self._server = _UnixHTTPServer(str(socket_path), Handler)
        os.chmod(socket_path, 0o600)
        self._thread = threading.Thread(target=self._server.serve_forever, name="edge-workload",
                                        daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        """The value of $IOTEDGE_WORKLOADURI."""
        return f"unix://{self.socket_path}"

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def calls(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
        self.socket_path.unlink(missing_ok=True)
