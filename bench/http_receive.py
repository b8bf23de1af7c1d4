"""CPU per delivery on the receiving side of the HTTP/1.1 path: `python -m bench.http_receive`.

A freedom service (one controller event route, the trivial `async def` handler, a delivery
secret) is started in its own process, served as `freedom run` serves it (uvicorn, with uvloop and
httptools when installed), once with `[consumer] http_dispatch = "direct"` (the HTTP entry calls
the handler, freedom/web/http_direct.py) and once with `"asgi"` (the whole FastAPI application,
as before). This process posts N deliveries to it, one after the other on one keep-alive
connection, with the headers the consumer proxy sends (`request_headers`: two record headers,
`x-message-key`, `x-retry-count`, `x-freedom-timeout-ms`; and `x-freedom-secret`), and reads the
service's CPU time (/proc) around them. No Kafka is involved: only the service's side of the
HTTP exchange is measured. The two settings alternate, `--rounds` times each.

Then the application's part alone, less noisy: the same request as an ASGI call of the
`Application` in this process (the scope uvicorn would make, the body, a `send` that drops the
answer), without the server, its CPU time per request for each setting.

    python -m bench.http_receive [--n 20000] [--rounds 2] [--no-secret]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-0123456789abcdef"
ROUTE = "/store/sell/goods/{event_id}"


def _app(dispatch: str, port: int, secret: bool) -> Any:
    import freedom
    from freedom.testing import write_config

    class Store:
        async def post_sell_goods_by(self, event_id: str) -> None:
            return None

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", Store)
        initiator.listen_event("event-sell", "Store.post_sell_goods_by")

    consumer: dict[str, object] = {"open": False, "http_dispatch": dispatch}
    if secret:
        consumer["secret"] = SECRET
    config = write_config(
        tempfile.mkdtemp(),
        app={
            "listen_addr": f"127.0.0.1:{port}",
            "log_level": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        },
        kafka={"consumer": consumer, "producer_clients": [{"servers": ["127.0.0.1:9"]}]},
    )
    return freedom.Application(config_dir=config, prepare=[prepare])


def serve(dispatch: str, port: int, secret: bool) -> None:
    """The service (child process): serve until killed."""
    _app(dispatch, port, secret).run()


def app_part(dispatch: str, n: int, secret: bool) -> float:
    """µs of CPU per request of the Application called as uvicorn calls it, without the server."""
    from freedom.kafka.consumer.delivery import request_headers
    from freedom.kafka.consumer.keys import event_id

    app = _app(dispatch, 1, secret)
    body = b'{"ID": 1, "Amount": 2}'
    records = [(b"x-action", "购买".encode()), (b"x-tenant", b"t7")]

    async def run() -> float:
        await app.start()
        scopes = []
        for i in range(n):
            headers = [(b"host", b"bench"), *request_headers(records, event_id(f"K{i}"), 0, 30.0)]
            if secret:
                headers.append((b"x-freedom-secret", SECRET.encode()))
            headers.append((b"content-length", str(len(body)).encode()))
            path = ROUTE.replace("{event_id}", f"K{i}")
            scopes.append(
                {
                    "type": "http",
                    "asgi": {"version": "3.0", "spec_version": "2.3"},
                    "http_version": "1.1",
                    "server": ("127.0.0.1", 8000),
                    "client": ("127.0.0.1", 50000),
                    "scheme": "http",
                    "method": "POST",
                    "root_path": "",
                    "path": path,
                    "raw_path": path.encode(),
                    "query_string": b"",
                    "headers": headers,
                    "state": {},
                }
            )

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        statuses: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        for scope in scopes[: min(2000, n)]:  # warm-up
            await app(dict(scope), receive, send)
        statuses.clear()
        gc.collect()
        gc.freeze()  # the prepared requests are not the service's garbage to collect
        cpu = time.process_time()
        for scope in scopes:
            await app(scope, receive, send)
        cpu = time.process_time() - cpu
        gc.unfreeze()
        await app.stop()
        assert statuses == [200] * n, set(statuses)
        return cpu / n * 1e6

    return asyncio.run(run())


def _cpu(pid: int) -> float:
    """The process's user + system CPU seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    """One keep-alive HTTP/1.1 connection posting deliveries as the consumer proxy does."""

    def __init__(self, port: int, secret: bool) -> None:
        from freedom.kafka.consumer.delivery import request_headers
        from freedom.kafka.consumer.keys import event_id

        self._event_id, self._headers = event_id, request_headers
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.secret = secret
        self.buf = b""

    def request(self, key: str) -> bytes:
        headers = self._headers(
            [(b"x-action", "购买".encode()), (b"x-tenant", b"t7")], self._event_id(key), 0, 30.0
        )
        if self.secret:
            headers.append((b"x-freedom-secret", SECRET.encode()))
        body = b'{"ID": 1, "Amount": 2}'
        lines = [f"POST {ROUTE.replace('{event_id}', key)} HTTP/1.1\r\nHost: bench\r\n".encode()]
        lines += [k + b": " + v + b"\r\n" for k, v in headers]
        lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
        return b"".join(lines) + body

    def post(self, request: bytes) -> int:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buf = rest[length:]
        return int(head.split(b" ", 2)[1])


def measure(dispatch: str, n: int, secret: bool) -> tuple[float, float]:
    """(µs of service CPU per delivery, deliveries/s) for one service run."""
    from freedom.testing import free_port, wait_until

    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    args = [sys.executable, "-m", "bench.http_receive", "--serve", dispatch, "--port", str(port)]
    if not secret:
        args.append("--no-secret")
    child = subprocess.Popen(args, cwd=ROOT, env=env)
    try:

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(up, 60, what="the service to listen")
        client = Client(port, secret)
        requests = [client.request(f"K{i}") for i in range(n)]
        for r in requests[: min(2000, n)]:  # warm-up
            assert client.post(r) == 200
        cpu, wall = _cpu(child.pid), time.perf_counter()
        for r in requests:
            status = client.post(r)
            if status != 200:
                raise AssertionError(f"HTTP {status}")
        cpu, wall = _cpu(child.pid) - cpu, time.perf_counter() - wall
        client.sock.close()
        return cpu / n * 1e6, n / wall
    finally:
        child.terminate()
        child.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_receive")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-secret", action="store_true")
    parser.add_argument("--serve", choices=("direct", "asgi"))
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, not args.no_secret)
        return
    figures: dict[str, list[tuple[float, float]]] = {"asgi": [], "direct": []}
    for _ in range(args.rounds):
        for dispatch in ("asgi", "direct"):
            cpu, rate = measure(dispatch, args.n, not args.no_secret)
            figures[dispatch].append((cpu, rate))
            print(f"http_dispatch = {dispatch:6}: {cpu:6.1f} µs CPU per delivery, {rate:7.0f}/s")
    for dispatch, runs in figures.items():
        cpus = ", ".join(f"{c:.1f}" for c, _ in runs)
        print(f"{dispatch}: µs CPU per delivery, each run: {cpus}")
    parts: dict[str, list[float]] = {"asgi": [], "direct": []}
    for _ in range(args.rounds):
        for dispatch in ("asgi", "direct"):
            parts[dispatch].append(app_part(dispatch, args.n, not args.no_secret))
    for dispatch, cpus in parts.items():
        each = ", ".join(f"{c:.1f}" for c in cpus)
        print(f"{dispatch}: the application's part, µs CPU per request, each run: {each}")


if __name__ == "__main__":
    main()
