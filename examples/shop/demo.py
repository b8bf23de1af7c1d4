"""Runs the shop/store example and shows it working: three purchases, three store log lines.

Starts `freedom run example:app` in this directory (no `servers` in conf/infra/kafka.toml, so on
the embedded broker), waits until it serves, calls GET /shop/{id} for goods 1..3, waits until the
store handler has logged each purchase, and stops the service with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
BASE = "http://127.0.0.1:8000"
GOODS = [1, 2, 3]


def main() -> int:
    try:
        httpx.get(BASE, timeout=0.5)
        print("demo: something already listens on 127.0.0.1:8000; stop it first", file=sys.stderr)
        return 1
    except httpx.TransportError:
        pass
    freedom = Path(sys.executable).with_name("freedom")
    proc = subprocess.Popen(
        [str(freedom), "run", "example:app"],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            print("  | " + line, end="", flush=True)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                print(f"demo: the service exited with code {proc.returncode}", file=sys.stderr)
                return 1
            try:
                httpx.get(f"{BASE}/docs", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    print("demo: the service did not start within 120 s", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        for goods_id in GOODS:
            r = httpx.get(f"{BASE}/shop/{goods_id}", timeout=30)
            print(f"demo: GET /shop/{goods_id} -> {r.status_code} {r.text}", flush=True)
        deadline = time.monotonic() + 60
        while sum("消耗商品ID" in line for line in output) < len(GOODS):
            if time.monotonic() > deadline:
                print(
                    "demo: the store handler did not log every purchase within 60 s",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.1)
        print(f"demo: the store handled all {len(GOODS)} purchases", flush=True)
        # The domain event: Goods.shopping() saved with the goods, published from the outbox.
        r = httpx.get(f"{BASE}/shop/shopping/1", timeout=30)
        print(f"demo: GET /shop/shopping/1 -> {r.status_code} {r.text}", flush=True)
        deadline = time.monotonic() + 60
        while not any("Goods:Shopping 商品ID:1" in line for line in output):
            if time.monotonic() > deadline:
                print(
                    "demo: the store did not log the Goods:Shopping domain event within 60 s",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.1)
        print(
            "demo: the store handled the Goods:Shopping domain event; stopping the service",
            flush=True,
        )
        return 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
