"""The classic DescribeGroups request (Kafka API key 15, version 0), asked directly of one broker.

librdkafka's `describe_consumer_groups` first asks ConsumerGroupDescribe (KIP-848) of a broker that
offers it. The embedded broker (Tansu 0.6) offers it but answers a live classic group as STABLE
with no member, while its DescribeGroups answer names every member (by member id only: see
embedded.py). The operations commands ask this when a group is live but no member was named
(ops/cluster.py). Plaintext only, to the one address given: the embedded broker is a single node
on loopback, which is its own group coordinator.
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass

from freedom.kafka.protocol import Reader, receive

__all__ = ["ClassicGroup", "ClassicMember", "describe_classic_group", "client_id_of"]

_API_KEY = 15
_CORRELATION = 0x46524545  # any number: checked in the answer


@dataclass(frozen=True)
class ClassicMember:
    member_id: str
    client_id: str
    host: str
    partitions: tuple[
        tuple[str, int], ...
    ]  # from the assignment (empty when the broker gives none)


@dataclass(frozen=True)
class ClassicGroup:
    error_code: int
    state: str  # "Stable", "Empty", "Dead", "PreparingRebalance", "CompletingRebalance"
    protocol_type: str
    members: tuple[ClassicMember, ...]


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _partitions(assignment: bytes) -> tuple[tuple[str, int], ...]:
    """The topic partitions of a consumer-protocol assignment (empty for none or another format)."""
    if not assignment:
        return ()
    try:
        r = Reader(assignment)
        r.take(">h")  # version
        out = []
        for _ in range(r.take(">i")):
            topic = r.string()
            out += [(topic, r.take(">i")) for _ in range(r.take(">i"))]
        return tuple(sorted(out))
    except ValueError:
        return ()


_UUID_TAIL = re.compile(r"-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def client_id_of(member_id: str) -> str:
    """The client id in a member id: brokers name a member `{client.id}-{uuid}`."""
    return _UUID_TAIL.sub("", member_id)


def describe_classic_group(bootstrap: str, group: str, timeout: float = 5.0) -> ClassicGroup:
    """Ask the broker at `bootstrap` (host:port) to describe `group`; OSError or ValueError when it
    cannot be asked or its answer cannot be read."""
    host, _, port = bootstrap.rpartition(":")
    body = struct.pack(">i", 1) + _string(group)
    request = struct.pack(">hhi", _API_KEY, 0, _CORRELATION) + _string("freedom-ops") + body
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", receive(sock, 4))[0]
        if not 0 < size < 64 * 1024 * 1024:
            raise ValueError(f"an answer of {size} bytes")
        r = Reader(receive(sock, size))
    if r.take(">i") != _CORRELATION:
        raise ValueError("the answer is to another request")
    for _ in range(r.take(">i")):
        error = r.take(">h")
        name = r.string()
        state = r.string()
        protocol_type = r.string()
        r.string()  # the protocol (assignor)
        members = []
        for _ in range(r.take(">i")):
            member_id = r.string()
            client_id = r.string()
            client_host = r.string()
            r.bytes_()  # metadata
            assignment = r.bytes_()
            members.append(
                ClassicMember(
                    member_id,
                    client_id or client_id_of(member_id),
                    client_host,
                    _partitions(assignment) if protocol_type == "consumer" else (),
                )
            )
        if name == group:
            return ClassicGroup(error, state, protocol_type, tuple(members))
    raise ValueError(f"the answer does not describe group {group!r}")
