"""Slowing token guessing: one rule for a wrong bearer token on the console's API and a wrong
token on its log-in form, per client address (docs/console.md#security).

The rule (a generic cell rate algorithm, GCRA): an address has FREE_FAILURES wrong tokens answered
at once; after that each wrong token is answered no sooner than SPACING_SEC after the previous
one from that address (a burst of them is answered SPACING_SEC apart). The allowance comes back
at one failure per SPACING_SEC of quiet. A right token is never slowed.

Waiting is an asyncio sleep of the request itself, and the waits are bounded: while an address is
being slowed and MAX_WAITING_PER_ADDRESS of its answers wait (or MAX_WAITING answers of every
address), its next request is refused at once (429, `Retry-After`) **without its token being
checked**. So a flood of concurrent guesses does not pile up tasks, and neither does it get
answers faster: a token is checked at most once per SPACING_SEC per address once the free ones
are spent, however many requests come.

Addresses: an IPv4 address is one address; an IPv6 address counts by its /64 (a host commonly
owns a whole /64). At most MAX_ADDRESSES are remembered; an address whose allowance is whole
again is forgotten first (that loses nothing), and past that bound the new ones share one entry.
The state is per process: each worker of `freedom run --workers N` counts its own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Callable

__all__ = [
    "FREE_FAILURES",
    "MAX_WAITING",
    "MAX_WAITING_PER_ADDRESS",
    "SPACING_SEC",
    "Busy",
    "GuessThrottle",
]

#: Wrong tokens of an address answered at once (a typo or two, a script with an old token).
FREE_FAILURES = 5
#: After those, each wrong token of the address is answered no sooner than this after the previous.
SPACING_SEC = 0.5
#: An address being slowed with this many answers waiting has its next request refused (429).
MAX_WAITING_PER_ADDRESS = 10
#: ... and so has every address being slowed while this many answers wait in all.
MAX_WAITING = 200
#: Addresses remembered at most (about 100 bytes each).
MAX_ADDRESSES = 10_000
#: The entry the addresses past MAX_ADDRESSES share.
_OVERFLOW = "*"


class Busy(Exception):
    """Too many answers of this address (or of all) wait: refuse at once, token unchecked."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


def address_key(address: str) -> str:
    """What the rule counts by: the IPv4 address, the /64 of an IPv6 address, else the text."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # "unknown" (no client address), a Unix socket's path
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class GuessThrottle:
    """The rule's state: per address key, its theoretical arrival time (GCRA) and answers waiting.

    Used from one event loop only (the console's routes): nothing awaits between the admission and
    the reservation of a failure's slot, so the counts are exact without a lock.
    """

    def __init__(
        self,
        *,
        free: int = FREE_FAILURES,
        spacing: float = SPACING_SEC,
        max_waiting_per_address: int = MAX_WAITING_PER_ADDRESS,
        max_waiting: int = MAX_WAITING,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self.spacing = spacing
        self.max_waiting_per_address = max_waiting_per_address
        self.max_waiting = max_waiting
        self.max_addresses = max_addresses
        self._clock = clock
        self._tat: dict[str, float] = {}  # key -> when its allowance is whole again
        self._waiting: dict[str, int] = {}  # key -> answers waiting
        self.waiting = 0  # answers waiting in all
        self._pruned_at = -math.inf

    def __len__(self) -> int:
        """Addresses remembered."""
        return len(self._tat)

    def _entry(self, key: str, now: float) -> str:
        """The entry `key` counts in: its own, or the shared one when MAX_ADDRESSES are remembered
        (after forgetting those whose allowance is whole again)."""
        if key in self._tat or len(self._tat) < self.max_addresses:
            return key
        if now - self._pruned_at >= 1.0:  # at most once a second: a flood of new addresses is O(1)
            self._pruned_at = now
            for k in [k for k, tat in self._tat.items() if tat <= now and k not in self._waiting]:
                del self._tat[k]
        return key if len(self._tat) < self.max_addresses else _OVERFLOW

    def _delay(self, entry: str, now: float) -> tuple[float, float]:
        """(the new theoretical arrival time, the wait) of a failure of `entry` now."""
        tat = max(self._tat.get(entry, now), now) + self.spacing
        return tat, tat - now - self.free * self.spacing

    async def check(
        self, address: str, right: Callable[[], bool], on_wrong: Callable[[], None] | None = None
    ) -> bool:
        """`right()` (the token check) under the rule: True at once when it holds; False when it does
        not, once the rule allows the answer (`on_wrong()` called first, at the failure); Busy,
        without calling `right()`, when the address is being slowed and too many of its answers
        (or of all) wait."""
        now = self._clock()
        entry = self._entry(address_key(address), now)
        tat, wait = self._delay(entry, now)
        if wait > 0 and (
            self._waiting.get(entry, 0) >= self.max_waiting_per_address
            or self.waiting >= self.max_waiting
        ):
            raise Busy(max(1, math.ceil(wait)))
        if right():
            return True
        self._tat[entry] = tat
        if on_wrong is not None:
            on_wrong()
        if wait > 0:
            self._waiting[entry] = self._waiting.get(entry, 0) + 1
            self.waiting += 1
            try:
                await asyncio.sleep(wait)
            finally:
                self.waiting -= 1
                left = self._waiting[entry] - 1
                if left:
                    self._waiting[entry] = left
                else:
                    del self._waiting[entry]
        return False
