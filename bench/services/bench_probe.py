"""What every benchmarked consumer calls once per handled record: counts, timestamps, latencies.

Shared by the freedom service, the FastStream app and the bare confluent-kafka loop, so all three
report the same way. It writes its state as JSON to `$BENCH_PROBE` (atomically: write, then
rename) at the first record, at the first warm-up record and when `$BENCH_EXPECT` records were
handled; the harness polls that file. A record body with `"warm": 1` is a warm-up (latency runs):
it marks the consumer ready and is not counted. A body with `"t"` (publish time, epoch seconds)
adds `now - t` to the latencies.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


class Probe:
    """Counts handled records and writes the state file when something the harness waits for happens."""

    def __init__(self) -> None:
        self.path = os.environ.get("BENCH_PROBE", "")
        self.expect = int(os.environ.get("BENCH_EXPECT", "0") or 0)
        self.count = 0
        self.warm = 0
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.latencies: list[float] = []
        self.delivery_path = (
            ""  # the freedom service's "consumer deliveries: ..." start-up line, if any
        )

    def hit(self, data: Any) -> None:
        """Record one handled record (`data`: its decoded JSON body)."""
        now = time.time()
        if isinstance(data, dict):
            if data.get("warm"):
                self.warm += 1
                if self.warm == 1:
                    self._write()
                return
            t = data.get("t")
            if t is not None:
                self.latencies.append(now - float(t))
        self.count += 1
        if self.count == 1:
            self.t_first = now
            self._write()
        if self.count == self.expect:
            self.t_last = now
            self._write()

    def _write(self) -> None:
        if not self.path:
            return
        state = {
            "count": self.count,
            "warm": self.warm,
            "t_first": self.t_first,
            "t_last": self.t_last,
            "latencies": self.latencies if self.t_last else [],
        }
        if self.delivery_path:
            state["delivery_path"] = self.delivery_path
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh)
        os.replace(tmp, self.path)


PROBE = Probe()
