"""Share groups (KIP-932) as the brokers describe them, asked with Kafka requests sent directly.

confluent-kafka 2.16's AdminClient has no share-group calls: `ConsumerGroupType` has no SHARE,
`list_consumer_groups` leaves share groups out, `describe_consumer_groups` answers a share group as
a CLASSIC group in state DEAD, and there is nothing for a share group's offsets. `freedom status`
(share_status.py) asks the brokers itself, with the requests Apache Kafka's own admin client uses:

- ApiVersions (18, v0): which of the others the broker offers;
- FindCoordinator (10, v4+): the group's coordinator;
- ListGroups (16, v5, types "share"): the share groups of each broker, with their state;
- ShareGroupDescribe (77, v1): a group's state and members (client id, host, partitions);
- DescribeShareGroupOffsets (90, v0; v1 adds the lag): per partition, the share-partition start
  offset (every record before it is acknowledged) and the broker's count of records not yet.

Plaintext connections only (`security.protocol` plaintext, the default): on a TLS or SASL listener
:class:`Unavailable` says why, and `freedom status` shows what the AdminClient gives. Every failure
is an OSError (connection), a ValueError (an answer that cannot be read) or Unavailable.
"""

from __future__ import annotations

import itertools
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from freedom.kafka.protocol import Reader, receive

__all__ = [
    "ShareGroupDescription",
    "ShareMember",
    "ShareOffset",
    "ShareWire",
    "Unavailable",
    "error_name",
]

TP = tuple[str, int]
_CLIENT_ID = b"freedom-ops"
_MAX_ANSWER = 64 * 1024 * 1024

API_VERSIONS, FIND_COORDINATOR, LIST_GROUPS = 18, 10, 16
SHARE_GROUP_DESCRIBE, DESCRIBE_SHARE_GROUP_OFFSETS = 77, 90


class Unavailable(Exception):
    """The brokers cannot be asked (not plaintext; a request they do not offer): one line why."""


@dataclass(frozen=True)
class ShareMember:
    member_id: str
    client_id: str
    host: str
    partitions: tuple[TP, ...]


@dataclass(frozen=True)
class ShareGroupDescription:
    group: str
    error_code: int  # 0; GROUP_ID_NOT_FOUND (69) when there is no such share group
    error_message: str | None
    state: str  # the broker's word: "Empty", "Stable", "Dead", ...
    members: tuple[ShareMember, ...]


@dataclass(frozen=True)
class ShareOffset:
    start: int  # the share-partition start offset (-1: none yet)
    lag: int | None  # records not acknowledged from `start` on (None: the broker gives no lag)
    error_code: int


def error_name(code: int) -> str:
    """The name of a Kafka error code (e.g. GROUP_ID_NOT_FOUND)."""
    try:
        import confluent_kafka

        return str(confluent_kafka.KafkaError(code).name())
    except Exception:  # noqa: BLE001 - a code librdkafka does not know
        return f"error {code}"


# ----------------------------------------------------------------------------- encoding


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _cstring(value: str) -> bytes:
    data = value.encode()
    return _uvarint(len(data) + 1) + data


def _carray(items: list[bytes] | None) -> bytes:
    return b"\x00" if items is None else _uvarint(len(items) + 1) + b"".join(items)


_NO_TAGS = b"\x00"


# ----------------------------------------------------------------------------- requests


class ShareWire:
    """Share-group requests to the brokers of one plaintext cluster."""

    def __init__(self, settings: dict[str, Any], timeout: float = 5.0) -> None:
        security = str(settings.get("security.protocol") or "plaintext").lower()
        if security != "plaintext":
            raise Unavailable(
                f"freedom reads share groups with requests of its own on plaintext listeners only "
                f"(security.protocol is {security})"
            )
        servers = [s.strip() for s in str(settings.get("bootstrap.servers", "")).split(",")]
        self.bootstrap = [_address(s) for s in servers if s]
        if not self.bootstrap:
            raise Unavailable("no bootstrap.servers")
        self.timeout = timeout
        self._correlation = itertools.count(1)
        self._versions: dict[int, tuple[int, int]] | None = None
        self._coordinators: dict[str, tuple[str, int]] = {}

    # ------------------------------------------------------------------ transport

    def _ask(
        self, address: tuple[str, int], key: int, version: int, body: bytes, flexible: bool = True
    ) -> Reader:
        correlation = next(self._correlation)
        header = struct.pack(">hhih", key, version, correlation, len(_CLIENT_ID)) + _CLIENT_ID
        request = header + (_NO_TAGS if flexible else b"") + body
        with socket.create_connection(address, timeout=self.timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            size = struct.unpack(">i", receive(sock, 4))[0]
            if not 0 < size < _MAX_ANSWER:
                raise ValueError(f"an answer of {size} bytes")
            r = Reader(receive(sock, size))
        if r.take(">i") != correlation:
            raise ValueError("the answer is to another request")
        if flexible and key != API_VERSIONS:  # ApiVersions answers with header v0 at any version
            r.tags()
        return r

    def _first(self, key: int, version: int, body: bytes) -> Reader:
        """Ask the first bootstrap address that answers."""
        error: OSError | None = None
        for address in self.bootstrap:
            try:
                return self._ask(address, key, version, body)
            except OSError as exc:
                error = exc
        assert error is not None
        raise error

    def versions(self) -> dict[int, tuple[int, int]]:
        """The request versions the (first answering) broker offers: api key -> (min, max)."""
        if self._versions is None:
            error: OSError | None = None
            for address in self.bootstrap:
                try:
                    r = self._ask(address, API_VERSIONS, 0, b"", flexible=False)
                    break
                except OSError as exc:
                    error = exc
            else:
                assert error is not None
                raise error
            code = r.take(">h")
            if code:
                raise ValueError(f"ApiVersions: {error_name(code)}")
            self._versions = {}
            for _ in range(r.take(">i")):
                api, low, high = r.take(">h"), r.take(">h"), r.take(">h")
                self._versions[api] = (low, high)
        return self._versions

    def supports_share_groups(self) -> bool:
        return SHARE_GROUP_DESCRIBE in self.versions()

    def _version(self, key: int, wanted: tuple[int, ...], what: str) -> int:
        low, high = self.versions().get(key, (0, -1))
        for v in sorted(wanted, reverse=True):
            if low <= v <= high:
                return v
        raise Unavailable(f"the broker does not offer {what} (share groups need Apache Kafka 4.1+)")

    # ------------------------------------------------------------------ coordinator

    def coordinator(self, group: str) -> tuple[str, int]:
        """The address of `group`'s coordinator (the bootstrap address on brokers before v4)."""
        if group in self._coordinators:
            return self._coordinators[group]
        low, high = self.versions().get(FIND_COORDINATOR, (0, -1))
        if high < 4:
            return self.bootstrap[0]
        version = min(high, 6)
        r = self._first(FIND_COORDINATOR, version, b"\x00" + _carray([_cstring(group)]) + _NO_TAGS)
        r.take(">i")  # throttle
        for _ in range(r.count()):
            r.text()  # the key
            r.take(">i")  # node id
            host, port = r.text(), r.take(">i")
            code = r.take(">h")
            message = r.cstring()
            r.tags()
            if code:
                raise ValueError(f"FindCoordinator: {error_name(code)} {message or ''}".rstrip())
            self._coordinators[group] = (host, port)
            return host, port
        raise ValueError("FindCoordinator named no coordinator")

    # ------------------------------------------------------------------ groups

    def list_share_groups(self, brokers: list[tuple[str, int]]) -> list[tuple[str, str]]:
        """(group, state) of every share group the `brokers` coordinate (each is asked)."""
        version = self._version(LIST_GROUPS, (5,), "ListGroups v5 (group types)")
        body = _carray([]) + _carray([_cstring("share")]) + _NO_TAGS
        found: dict[str, str] = {}
        for address in brokers or self.bootstrap:
            r = self._ask(address, LIST_GROUPS, version, body)
            r.take(">i")  # throttle
            code = r.take(">h")
            if code:
                raise ValueError(f"ListGroups: {error_name(code)}")
            for _ in range(r.count()):
                group, _protocol, state, kind = r.text(), r.text(), r.text(), r.text()
                r.tags()
                if kind.lower() == "share":
                    found[group] = state
        return sorted(found.items())

    def describe(self, group: str) -> ShareGroupDescription:
        """`group`'s state and members, from its coordinator."""
        version = self._version(SHARE_GROUP_DESCRIBE, (1,), "ShareGroupDescribe v1")
        body = _carray([_cstring(group)]) + b"\x00" + _NO_TAGS
        r = self._ask(self.coordinator(group), SHARE_GROUP_DESCRIBE, version, body)
        r.take(">i")  # throttle
        for _ in range(r.count()):
            code, message, name, state = r.take(">h"), r.cstring(), r.text(), r.text()
            r.take(">i")  # group epoch
            r.take(">i")  # assignment epoch
            r.text()  # assignor
            members = tuple(_members(r))
            r.take(">i")  # authorized operations
            r.tags()
            if name == group:
                return ShareGroupDescription(group, code, message, state, members)
        raise ValueError(f"ShareGroupDescribe did not describe group {group!r}")

    def offsets(self, group: str) -> dict[TP, ShareOffset]:
        """Per partition the group has state on: its start offset and, on v1, the broker's lag."""
        version = self._version(DESCRIBE_SHARE_GROUP_OFFSETS, (0, 1), "DescribeShareGroupOffsets")
        body = _carray([_cstring(group) + _carray(None) + _NO_TAGS]) + _NO_TAGS
        r = self._ask(self.coordinator(group), DESCRIBE_SHARE_GROUP_OFFSETS, version, body)
        r.take(">i")  # throttle
        out: dict[TP, ShareOffset] = {}
        for _ in range(r.count()):
            name = r.text()
            found: dict[TP, ShareOffset] = {}
            for _ in range(r.count()):
                topic = r.text()
                r.skip(16)  # topic id
                for _ in range(r.count()):
                    partition, start = r.take(">i"), r.take(">q")
                    r.take(">i")  # leader epoch
                    lag = r.take(">q") if version >= 1 else None
                    code = r.take(">h")
                    r.cstring()  # error message
                    r.tags()
                    found[(topic, partition)] = ShareOffset(start, lag, code)
                r.tags()
            code, message = r.take(">h"), r.cstring()
            r.tags()
            if name == group:
                if code:
                    raise ValueError(f"{error_name(code)}: {message or ''}".rstrip(": "))
                out = found
        return out


def _members(r: Reader) -> Iterator[ShareMember]:
    for _ in range(r.count()):
        member_id = r.text()
        r.cstring()  # rack
        r.take(">i")  # member epoch
        client_id, host = r.text(), r.text()
        for _ in range(r.count()):
            r.text()  # a subscribed topic
        partitions: list[TP] = []
        for _ in range(r.count()):  # the assignment's topics
            r.skip(16)  # topic id
            topic = r.text()
            partitions += [(topic, r.take(">i")) for _ in range(r.count())]
            r.tags()
        r.tags()  # the assignment's own
        r.tags()
        yield ShareMember(member_id, client_id, host, tuple(sorted(partitions)))


def _address(server: str) -> tuple[str, int]:
    server = server.rpartition("://")[2]
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise Unavailable(f"cannot read the address {server!r}")
    return host.strip("[]"), int(port)
