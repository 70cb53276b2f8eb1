"""The registry benchmark's lean HTTP client: an asyncio HTTP/1.1 load generator and sequential latency probes.

One thread, raw sockets with TCP_NODELAY, keep-alive, Content-Length and chunked bodies: the load generator must
not take the cores the servers under test need (this machine has two), so no HTTP library runs per request.
"""

from __future__ import annotations

import asyncio
import http.client
import resource
import socket
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

#: a request never answered within this is a broken server, not a slow one
HARD_TIMEOUT = 120.0


@dataclass
class Load:
    """What one load phase measured: latencies (s) of the good answers, error kinds counted, wall time, client CPU."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    client_cpu: float = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return quantile(self.latencies, q)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Conn:
    """One keep-alive HTTP/1.1 connection: send a GET, read the status and the whole body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> _Conn:
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def get(self, request: bytes) -> tuple[int, bool]:
        """(status, whether the connection may be reused)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:  # neither: the body runs to the end of the connection
            await self.reader.read()
            return status, False
        return status, headers.get("connection", "").lower() != "close"

    def close(self) -> None:
        self.writer.close()


def _request(url: str, headers: dict[str, str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", *(f"{k}: {v}" for k, v in headers.items())]
    return parts.hostname or "", parts.port or 80, ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _open_loop(url: str, headers: dict[str, str], rate: float, seconds: float, max_conns: int,
                     timeout: float) -> Load:
    """Requests sent on a fixed schedule (``rate`` per second for ``seconds``), each timed from its scheduled start.

    Open loop: a slow answer does not delay the next request, so queueing in the server shows in the latencies (no
    coordinated omission). At most ``max_conns`` requests are outstanding, and a request waits for its answer even
    past ``timeout``: the server never holds more than ``max_conns`` (a client that hung up would leave its request
    in the server's queue, still to be worked off). A request waiting for a free connection waits on the clock; one
    not sent, or not answered, within ``timeout`` of its scheduled start is an error.
    """
    host, port, request = _request(url, headers)
    load, idle, slots = Load(), [], asyncio.Semaphore(max_conns)
    loop = asyncio.get_running_loop()

    async def one(scheduled: float) -> None:
        try:
            await asyncio.wait_for(slots.acquire(), max(0.0, timeout - (loop.time() - scheduled)))
        except asyncio.TimeoutError:
            load.error("not sent in time")
            return
        try:
            conn = idle.pop() if idle else await _Conn.open(host, port)
            try:
                status, reusable = await asyncio.wait_for(conn.get(request), HARD_TIMEOUT)
            except BaseException:
                conn.close()
                raise
            elapsed = loop.time() - scheduled
            if status != 200:
                load.error(f"HTTP {status}")
            elif elapsed > timeout:
                load.error("answered too late")
            else:
                load.latencies.append(elapsed)
            if reusable:
                idle.append(conn)
            else:
                conn.close()
        except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            load.error(type(exc).__name__)
        finally:
            slots.release()

    cpu0, start, tasks = cpu_seconds(), loop.time(), []
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        if (delay := scheduled - loop.time()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(scheduled)))
    await asyncio.gather(*tasks)
    load.seconds, load.client_cpu = loop.time() - start, cpu_seconds() - cpu0
    for conn in idle:
        conn.close()
    return load


async def _closed_loop(url: str, headers: dict[str, str], clients: int, seconds: float) -> Load:
    """``clients`` connections, each sending its next request as soon as the last is answered, for ``seconds``."""
    host, port, request = _request(url, headers)
    load = Load()
    loop = asyncio.get_running_loop()
    cpu0, start = cpu_seconds(), loop.time()
    end = start + seconds

    async def client() -> None:
        conn = None
        while loop.time() < end:
            t0 = loop.time()
            try:
                if conn is None:
                    conn = await _Conn.open(host, port)
                status, reusable = await asyncio.wait_for(conn.get(request), HARD_TIMEOUT)
            except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                load.error(type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
                continue
            if status == 200:
                load.latencies.append(loop.time() - t0)
            else:
                load.error(f"HTTP {status}")
            if not reusable:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    load.seconds, load.client_cpu = loop.time() - start, cpu_seconds() - cpu0
    return load


def open_loop(url: str, headers: dict[str, str], *, rate: float, seconds: float, max_conns: int = 64,
              timeout: float = 10.0) -> Load:
    return asyncio.run(_open_loop(url, headers, rate, seconds, max_conns, timeout))


def closed_loop(url: str, headers: dict[str, str], *, clients: int, seconds: float) -> Load:
    return asyncio.run(_closed_loop(url, headers, clients, seconds))


def probe(urls: list[str], headers: dict[str, str], *, keep_alive: bool) -> list[float]:
    """Seconds per GET of each URL in turn from one client (http.client, TCP_NODELAY): on one kept-alive connection,
    or each on a new one (connect included). Every answer must be a 200."""
    times: list[float] = []
    conn: http.client.HTTPConnection | None = None
    for url in urls:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        t0 = time.perf_counter()
        if conn is None:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=HARD_TIMEOUT)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        body = response.read()
        times.append(time.perf_counter() - t0)
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status} {body[:300]!r}")
        if not keep_alive or response.will_close:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return times


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000
