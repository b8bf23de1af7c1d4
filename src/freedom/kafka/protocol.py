"""Reading Kafka protocol answers: the primitives the two requests freedom sends itself share
(kafka/classic_groups.py: DescribeGroups; kafka/share_wire.py: the share-group requests), both for
what confluent-kafka's AdminClient does not give. Every malformed answer is a ValueError."""

from __future__ import annotations

import socket
import struct

__all__ = ["Reader", "receive"]


class Reader:
    """A cursor over one answer: fixed-size fields, legacy strings and bytes, and the flexible
    versions' varints, compact strings, compact arrays and tagged fields."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.at + size > len(self.data):
            raise ValueError("the answer ends early")
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += size
        return int(value)

    def raw(self, size: int) -> bytes:
        if size < 0:
            return b""
        if self.at + size > len(self.data):
            raise ValueError("the answer ends early")
        out = self.data[self.at : self.at + size]
        self.at += size
        return out

    def skip(self, size: int) -> None:
        if size < 0 or self.at + size > len(self.data):
            raise ValueError("the answer ends early")
        self.at += size

    def string(self) -> str:
        return self.raw(self.take(">h")).decode("utf-8", "replace")

    def bytes_(self) -> bytes:
        return self.raw(self.take(">i"))

    def uvarint(self) -> int:
        n = shift = 0
        while True:
            byte = self.take(">B")
            n |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return n
            shift += 7
            if shift > 63:
                raise ValueError("a varint too long")

    def cstring(self) -> str | None:
        n = self.uvarint()
        if n == 0:
            return None
        start = self.at
        self.skip(n - 1)
        return self.data[start : self.at].decode("utf-8", "replace")

    def text(self) -> str:
        return self.cstring() or ""

    def count(self) -> int:
        """The length of a compact array (0 for a null one)."""
        return max(0, self.uvarint() - 1)

    def tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # the tag
            self.skip(self.uvarint())


def receive(sock: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes of an answer (ValueError when the broker closes the connection first)."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ValueError("the broker closed the connection")
        data += chunk
    return bytes(data)
