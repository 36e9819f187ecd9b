"""A low-overhead HTTP/1.1 load generator: a few processes, each driving its share of keep-alive
connections over raw non-blocking sockets (one ``selectors`` loop, requests pre-encoded), so that the
generator takes little of the CPU it shares with the service it measures.

Each connection sends its requests one after another (a closed loop: a client waits for its answer
before the next request), and the latency of each is the time from its first byte sent to its last
byte received. The measured phase is the steady state: every connection is opened and sends one
untimed warm-up request (its first request) before it, and the processes start it together (a
barrier), so connection set-up and the generator's own start-up are not in the figures. A run
sends a fixed list of requests and stops by itself; the generator's own CPU time is measured and
reported.
"""

from __future__ import annotations

import multiprocessing
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEADER_END = b"\r\n\r\n"


def encode(method: str, target: str, host: str, body: bytes = b"",
           content_type: str = "application/json") -> bytes:
    """One HTTP/1.1 keep-alive request as bytes."""
    head = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    if body or method in ("POST", "PUT"):
        head += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Result:
    """Latencies (s) of the answered requests, non-2xx answers, wall time (s) and the generator's CPU (s)."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    unfinished: int = 0


class _Connection:
    def __init__(self, address: tuple[str, int], requests: list[bytes]) -> None:
        self.sock = socket.create_connection(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.requests = requests
        self.next = 0
        self.buffer = bytearray()
        self.started = 0.0

    def send_next(self) -> None:
        self.buffer.clear()
        self.started = time.perf_counter()
        self.sock.sendall(self.requests[self.next])  # small requests: the socket buffer takes them whole
        self.next += 1

    def answer(self) -> int | None:
        """The status of the complete answer in the buffer, or None while it is incomplete."""
        end = self.buffer.find(HEADER_END)
        if end < 0:
            return None
        lines = bytes(self.buffer[:end]).lower().split(b"\r\n")
        lengths = [line[15:] for line in lines[1:] if line.startswith(b"content-length:")]
        if not lengths:
            raise RuntimeError(f"an answer without Content-Length: {bytes(self.buffer[:200])!r}")
        if len(self.buffer) < end + 4 + int(lengths[0]):
            return None
        return int(lines[0].split()[1])


def _warm_up(connections: list[_Connection]) -> None:
    """Send each connection's first request once, untimed, and read its answer."""
    for connection in connections:
        connection.sock.setblocking(True)
        connection.buffer.clear()
        connection.sock.sendall(connection.requests[0])
        while connection.answer() is None:
            chunk = connection.sock.recv(1 << 16)
            if not chunk:
                raise RuntimeError("the service closed a keep-alive connection during the warm-up")
            connection.buffer += chunk
        connection.sock.setblocking(False)


def _drive(address: tuple[str, int], per_connection: list[list[bytes]], deadline: float,
           start: Any = None) -> Result:
    """Warm each connection up, wait at ``start`` (a barrier, if any), then send each connection's
    requests in turn until all are answered or ``deadline`` (monotonic) passes."""
    cpu = time.process_time()
    result = Result()
    selector = selectors.DefaultSelector()
    connections = [_Connection(address, requests) for requests in per_connection if requests]
    _warm_up(connections)
    if start is not None:
        start.wait()
    began = time.perf_counter()
    for connection in connections:
        connection.send_next()
        selector.register(connection.sock, selectors.EVENT_READ, connection)
    open_connections = len(connections)
    while open_connections and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            connection: _Connection = key.data
            chunk = connection.sock.recv(1 << 16)
            if not chunk:
                raise RuntimeError("the service closed a keep-alive connection")
            connection.buffer += chunk
            status = connection.answer()
            if status is None:
                continue
            result.latencies.append(time.perf_counter() - connection.started)
            result.failures += not 200 <= status < 300
            if connection.next < len(connection.requests):
                connection.send_next()
            else:
                selector.unregister(connection.sock)
                open_connections -= 1
    result.wall_s = time.perf_counter() - began
    result.unfinished = sum(len(c.requests) for c in connections) - len(result.latencies)
    for connection in connections:
        connection.sock.close()
    result.cpu_s = time.process_time() - cpu
    return result


def _drive_packed(args: tuple) -> Result:
    return _drive(*args)


def run(address: tuple[str, int], requests: list[bytes], clients: int, processes: int = 1,
        timeout: float = 600.0) -> Result:
    """Send ``requests`` over ``clients`` keep-alive connections (request i on connection i % clients)
    spread over ``processes`` processes; stop after ``timeout`` s at the latest (``unfinished`` counts
    what was not answered then). Latencies of all connections, and the CPU of all generator processes."""
    per_connection = [requests[c::clients] for c in range(clients)]
    processes = max(1, min(processes, clients))
    deadline = time.monotonic() + timeout
    if processes == 1:
        parts = [_drive(address, per_connection, deadline)]
    else:
        context = multiprocessing.get_context("fork")
        with context.Manager() as manager, context.Pool(processes) as pool:
            start = manager.Barrier(processes)
            shares = [(address, per_connection[p::processes], deadline, start) for p in range(processes)]
            parts = pool.map(_drive_packed, shares)
    total = Result(wall_s=max(part.wall_s for part in parts))  # the measured phase, without warm-ups
    for part in parts:
        total.latencies += part.latencies
        total.failures += part.failures
        total.cpu_s += part.cpu_s
        total.unfinished += part.unfinished
    return total


def percentiles(latencies: list[float]) -> dict[str, float]:
    """p50 / p95 / p99 in milliseconds, and the count."""
    values = np.asarray(latencies) * 1e3
    if len(values) == 0:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"), "n": 0}
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)),
            "p99_ms": float(np.percentile(values, 99)), "n": len(values)}


class Poller:
    """Sends one request every ``interval`` s on its own keep-alive connection, in a thread, until
    stopped; records each latency (e.g. /health's, to see whether the event loop stays responsive)."""

    def __init__(self, address: tuple[str, int], request: bytes, interval: float = 0.05) -> None:
        self.address, self.request, self.interval = address, request, interval
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)

    def _run(self) -> None:
        connection = _Connection(self.address, [self.request])
        connection.sock.setblocking(True)
        while not self._stop.is_set():
            connection.next = 0
            connection.send_next()
            while connection.answer() is None:
                chunk = connection.sock.recv(1 << 16)
                if not chunk:
                    raise RuntimeError("the service closed the poller's connection")
                connection.buffer += chunk
            self.latencies.append(time.perf_counter() - connection.started)
            self._stop.wait(self.interval)
        connection.sock.close()

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
