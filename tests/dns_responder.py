"""A DNS responder for the live tests: UDP and TCP on one loopback address, port 53 (root),
answering A / AAAA questions for the names it is given (NXDOMAIN otherwise), or sending a
test's raw bytes as the answer to the next question (hostile replies). Messages are built by
tests/dns_wire.py; the question is read with a plain label walk (the test's own clients send
uncompressed questions)."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dns_wire as w


def parse_question(query: bytes) -> tuple[int, str, int]:
    """(id, name, qtype) of a query with one uncompressed question."""
    ident = struct.unpack("!H", query[:2])[0]
    labels, pos = [], 12
    while query[pos]:
        n = query[pos]
        labels.append(query[pos + 1:pos + 1 + n].decode("ascii").lower())
        pos += 1 + n
    qtype = struct.unpack("!H", query[pos + 1:pos + 3])[0]
    return ident, ".".join(labels), qtype


class Responder:
    def __init__(self, address: str, names: dict[str, list[str]]) -> None:
        self.address = address
        self.names = names
        self.raw: list[bytes] = []  # replies sent as they are, first in first out
        self.questions: list[tuple[str, int]] = []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((address, 53))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((address, 53))
        self.tcp.listen(8)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self._threads:
            t.start()

    def answer(self, query: bytes) -> bytes:
        if self.raw:
            return self.raw.pop(0)
        ident, name, qtype = parse_question(query)
        self.questions.append((name, qtype))
        family = 4 if qtype == w.A else 6 if qtype == w.AAAA else 0
        addresses = [a for a in self.names.get(name, [])
                     if ipaddress.ip_address(a).version == family]
        if name not in self.names:
            return w.response(name, qtype, [], rcode=3, ident=ident)
        records = [w.a_record(w.pointer(12), a) if family == 4 else w.aaaa_record(w.pointer(12), a)
                   for a in addresses]
        return w.response(name, qtype, records, ident=ident)

    def _serve_udp(self) -> None:
        self.udp.settimeout(0.2)
        while not self._stop.is_set():
            try:
                query, peer = self.udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.udp.sendto(self.answer(query), peer)

    def _serve_tcp(self) -> None:
        self.tcp.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    head = conn.recv(2)
                    size = struct.unpack("!H", head)[0]
                    query = b""
                    while len(query) < size:
                        chunk = conn.recv(size - len(query))
                        if not chunk:
                            break
                        query += chunk
                    conn.sendall(w.tcp_messages(self.answer(query)))
                except (OSError, struct.error):
                    pass

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()


@contextmanager
def responder(address: str, names: dict[str, list[str]]) -> Iterator[Responder]:
    r = Responder(address, names)
    try:
        yield r
    finally:
        r.close()


def ask_udp(server: str, qname: str, qtype: int = w.A, port: int = 53) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(w.query(qname, qtype), (server, port))
        return s.recv(4096)


def ask_tcp(server: str, qname: str, qtype: int = w.A) -> bytes:
    with socket.create_connection((server, 53), timeout=2) as s:
        s.sendall(w.tcp_messages(w.query(qname, qtype)))
        head = s.recv(2)
        size = struct.unpack("!H", head)[0]
        data = b""
        while len(data) < size:
            chunk = s.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        return data
