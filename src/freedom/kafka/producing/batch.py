"""The outcomes of `publish_batch`: `PendingBatch` (queued, answers arriving) and `BatchResult`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from freedom.errors import PublishError
from freedom.kafka.producing.delivery import Delivered, check_not_on_loop, outcome

if TYPE_CHECKING:
    from freedom.kafka.producing.client import ProducerClient
    from freedom.kafka.producing.msg import Msg


@dataclass
class BatchResult:
    """The outcome of every message of a batch, in the order they were given."""

    results: list[Delivered | PublishError]

    @property
    def delivered(self) -> list[Delivered]:
        return [r for r in self.results if isinstance(r, Delivered)]

    @property
    def failed(self) -> list[tuple[int, PublishError]]:
        """`(index in the batch, error)` of each message that was not delivered."""
        return [(i, r) for i, r in enumerate(self.results) if isinstance(r, PublishError)]

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_for_failures(self) -> None:
        """Raise a PublishError summarising the failures, if there are any."""
        failed = self.failed
        if failed:
            first = failed[0][1]
            raise PublishError(
                f"{len(failed)} of {len(self.results)} messages were not delivered; first: {first}"
            )


class PendingBatch:
    """A batch whose records are all queued (accepted); wait for the broker's answers with `wait()`/`result()`.

    Each record's outcome goes straight into its slot from the delivery-report thread; the waiter
    is woken once, by the last one.
    """

    def __init__(self, msgs: list[Msg]) -> None:
        size = len(msgs)
        self._msgs = msgs
        self._results: list[Delivered | PublishError | None] = [None] * size
        self._left = size
        self._lock = threading.Lock()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        # Running, so that a cancelled `wait()` cannot cancel it: other waiters, and the last
        # record's report setting it, still find it as it should be.
        self._done.set_running_or_notify_cancel()
        if size == 0:
            self._done.set_result(None)

    def _settle(self, index: int, outcome: Delivered | PublishError) -> None:
        """Record the outcome of message `index` (any thread); the last one wakes the waiters."""
        self._results[index] = outcome
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._done.set_result(None)

    def _reporter(self, client: ProducerClient) -> Callable[[int, Any, Any], None]:
        """The delivery callback of this batch's records sent by `client`; each record's own callback
        is `functools.partial(reporter, index)`. Only the index is bound per record: a partial
        whose arguments are all ints is one object for the garbage collector to track, where a
        closure is half a dozen (with 10,000 records in flight, the collector's full passes were a
        quarter of a batch's time)."""
        msgs = self._msgs

        def report(index: int, err: Any, record: Any) -> None:  # runs on a poll thread
            self._settle(index, outcome(client, err, record, msgs[index]))

        return report

    def _collect(self) -> BatchResult:
        return BatchResult(list(self._results))  # type: ignore[arg-type] # every slot is filled once done

    async def wait(self) -> BatchResult:
        """Wait (without blocking the loop) until every record is acknowledged or failed."""
        await asyncio.wrap_future(self._done)
        return self._collect()

    def result(self, timeout: float | None = None) -> BatchResult:
        """Block until every record is acknowledged or failed; TimeoutError after `timeout` s."""
        check_not_on_loop("PendingBatch.result()", "await pending.wait()")
        self._done.result(timeout)
        return self._collect()
