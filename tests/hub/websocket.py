"""MQTT over WebSockets for the stand-in's gate: what IoT Hub serves on port 443.

The SDK (azure-iot-device 2.14.0, paho-mqtt 1.6.1 underneath) opens TLS to port 443, sends an
HTTP/1.1 upgrade for path /$iothub/websocket with subprotocol "mqtt", and then carries the
MQTT byte stream in binary WebSocket frames (RFC 6455; masked from the client, unmasked from
the server). The gate answers the upgrade here, then hands its usual CONNECT check and splice
a StreamReader of the unframed client bytes and a writer that frames what it writes, so the
credentials are checked exactly as on 8883.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
from typing import Any

WS_PATH = "/$iothub/websocket"
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_REQUEST_BYTES = 8 * 1024
MAX_FRAME_BYTES = 1024 * 1024  # IoT Hub's messages are at most 256 KiB

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(ValueError):
    """Not a WebSocket upgrade the hub would accept."""


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, str]:
    """Read the upgrade request and answer 101; the request's headers (lower-case names).
    A request IoT Hub would not take gets a 400 and HandshakeError."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as error:
        raise HandshakeError("request header too long") from error
    if len(raw) > MAX_REQUEST_BYTES:
        raise HandshakeError("request header too long")
    lines = raw.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    path = rest.rpartition(" ")[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    problem = None
    if method != "GET" or path != WS_PATH:
        problem = f"{method} {path[:80]!r} is not GET {WS_PATH}"
    elif headers.get("upgrade", "").lower() != "websocket":
        problem = "no Upgrade: websocket"
    elif "mqtt" not in [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]:
        problem = "subprotocol mqtt not offered"
    elif not headers.get("sec-websocket-key"):
        problem = "no Sec-WebSocket-Key"
    if problem is not None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        raise HandshakeError(problem)
    writer.write(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(headers['sec-websocket-key'])}\r\n"
            "Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    return headers


def frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """One final, unmasked frame (the server's side)."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return head + payload


async def unframe(source: asyncio.StreamReader, sink: asyncio.StreamReader,
                  raw_writer: asyncio.StreamWriter) -> None:
    """Client frames from `source` -> their payload bytes into `sink`, until a close frame,
    EOF or an error (then sink gets EOF). Pings are answered."""
    try:
        while True:
            first, second = await source.readexactly(2)
            opcode = first & 0x0F
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await source.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await source.readexactly(8))
            if not second & 0x80 or size > MAX_FRAME_BYTES:
                break  # a client must mask (RFC 6455 5.1); or a frame no hub takes
            mask = await source.readexactly(4)
            masked = await source.readexactly(size)
            keystream = (mask * (size // 4 + 1))[:size]
            data = (int.from_bytes(masked, "big") ^ int.from_bytes(keystream, "big")).to_bytes(
                size, "big")
            if opcode in (OP_BINARY, OP_CONTINUATION):
                sink.feed_data(data)
            elif opcode == OP_PING:
                raw_writer.write(frame(data, OP_PONG))
            elif opcode == OP_CLOSE:
                raw_writer.write(frame(b"", OP_CLOSE))
                break
            elif opcode != OP_PONG:
                break  # text frames are not MQTT
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        sink.feed_eof()


class FramingWriter:
    """What the gate's splice needs of an asyncio.StreamWriter, framing each write as one
    binary frame on the TLS stream underneath."""

    def __init__(self, raw: asyncio.StreamWriter) -> None:
        self.raw = raw
        self.transport = raw.transport

    def write(self, data: bytes) -> None:
        if data:
            self.raw.write(frame(bytes(data)))

    async def drain(self) -> None:
        await self.raw.drain()

    def close(self) -> None:
        if not self.raw.is_closing():
            self.raw.write(frame(b"", OP_CLOSE))
        self.raw.close()

    def is_closing(self) -> bool:
        return self.raw.is_closing()

    async def wait_closed(self) -> None:
        await self.raw.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)
