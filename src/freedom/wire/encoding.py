"""How a record's key and headers travel in an HTTP request, and back (docs/contract.md,
"Keys and header values HTTP cannot carry").

Record keys and header values are bytes; HTTP cannot carry every byte. This leaf module holds
the one rule, used by every transport (HTTP/1.1, h2c, in-process) to encode and by freedom's
`Request` to decode, so that any key and any header reach the handler intact:

- **Header values.** A value that is UTF-8 text without control characters (C0, DEL, C1) and
  without a leading or trailing space travels as it is. Any other value travels base64url
  (no padding), and its header name is listed in `x-freedom-encoded` (comma-separated). When one
  value of a name is encoded, every value of that name is.
- **Header names.** A name that is not an HTTP token (or that starts with `x-freedom-hex-`)
  travels as `x-freedom-hex-<lowercase hex of its bytes>`, its value base64url, and is listed in
  `x-freedom-encoded` too. HTTP header names are case-insensitive: token names arrive lowercased.
- **The event id** (the route's path parameter and `x-message-key`): the key itself when it is
  *plain text*: UTF-8, 1 to :data:`MAX_KEY_BYTES` bytes, no control characters, no leading or
  trailing space, not `.` or `..`, and not starting with `~`. Every other id starts with `~`:
  `~b64.<base64url of the key>` (a key that is not plain text, up to `MAX_KEY_BYTES`),
  `~sha256.<hex digest>` (a longer key) or `~pos.<topic>.<partition>.<offset>` (a record without
  a key, at the position where it was first read). The mapping is one-to-one: two different
  records never share an id (up to SHA-256 collisions for keys over `MAX_KEY_BYTES`).
- **The full key**: whenever the id is not the key itself and the record has a key,
  `x-freedom-key` carries it, base64url.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from freedom.wire.headers import ENCODED_HEADER, HEX_NAME_PREFIX, KEY_HEADER

ID_MARKER = "~"  # every event id that is not the key itself starts with it
ENCODED_ID_PREFIX = "~b64."
DIGEST_ID_PREFIX = "~sha256."
POSITION_ID_PREFIX = "~pos."

#: Keys longer than this (bytes) get a digest id: the id is in the URL path and a header of every
#: delivery, and in log lines. Servers take far longer paths (uvicorn/httptools and granian ~64 KB),
#: but proxies in front of a service often cap a header line at 8 KB.
MAX_KEY_BYTES = 1024

_ENCODED_RAW = ENCODED_HEADER.encode()
_KEY_RAW = KEY_HEADER.encode()
_HEX_RAW = HEX_NAME_PREFIX.encode()
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_B64 = re.compile(r"[A-Za-z0-9_-]*")
# Characters a plain value or id must not have: C0 controls, DEL, C1 controls, and the Unicode
# line and paragraph separators (they break log lines as a newline does).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]")  # the same, for ASCII


def b64encode(data: bytes) -> bytes:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64decode(text: bytes | str) -> bytes | None:
    """The bytes of base64url text (padding optional); None when it is not base64url."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if not _B64.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _plain_text(raw: bytes) -> str | None:
    """`raw` as text when it can travel as it is in a header value; else None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _CONTROL.search(text) or text[:1] == " " or text[-1:] == " ":
        return None
    return text


def plain_value(value: bytes) -> bool:
    """True when a header value travels as it is (see the module docstring)."""
    if value.isascii():  # the usual case, checked without decoding
        return not _CONTROL_BYTES.search(value) and value[:1] != b" " and value[-1:] != b" "
    return _plain_text(value) is not None


def plain_name(name: bytes) -> bool:
    """True when a header name travels as it is: an HTTP token not in freedom's hex-name space."""
    return bool(_TOKEN.fullmatch(name)) and not name.lower().startswith(_HEX_RAW)


def hex_name(name: bytes) -> bytes:
    """The name a header name HTTP cannot carry travels under."""
    return _HEX_RAW + name.hex().encode()


# --------------------------------------------------------------------------- event ids


def key_id(key: bytes) -> str:
    """The event id of a record with key `key` (a record without a key, or with an empty one, has
    a position id instead; an empty key given here gets `~b64.`)."""
    if len(key) > MAX_KEY_BYTES:
        return DIGEST_ID_PREFIX + hashlib.sha256(key).hexdigest()
    text = _plain_text(key)
    if not text or text.startswith(ID_MARKER) or text in (".", ".."):  # None or empty too
        return ENCODED_ID_PREFIX + b64encode(key).decode()
    return text


def position_id(topic: str, partition: int, offset: int) -> str:
    """The event id of a record without a key, first read from `topic[partition]@offset`."""
    return f"{POSITION_ID_PREFIX}{topic}.{partition}.{offset}"


def is_key_itself(event_id: str) -> bool:
    """True when the id is the key's own text (it does not start with the marker)."""
    return not event_id.startswith(ID_MARKER)


def key_of(event_id: str | None, key_header: bytes | str | None) -> bytes | None:
    """The record key of a delivery from its id (`x-message-key` or the path parameter) and its
    `x-freedom-key` header; None for a record without a key."""
    if key_header is not None:
        key = b64decode(key_header)
        if key is not None:
            return key
    if event_id is None:
        return None
    if is_key_itself(event_id):
        return event_id.encode("utf-8", "surrogatepass")
    if event_id.startswith(ENCODED_ID_PREFIX):
        return b64decode(event_id[len(ENCODED_ID_PREFIX) :])
    return None


# --------------------------------------------------------------------------- decoding a request's headers


def decode_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]] | None:
    """The record's headers of a delivery's wire headers (names lowercased by HTTP, except
    hex-encoded ones, which come back as the record had them); None when nothing was encoded.

    The `x-freedom-encoded` header itself is left out. Malformed encodings are left as they came.
    """
    listed: set[bytes] | None = None
    for k, v in raw:
        if k == _ENCODED_RAW:
            listed = (listed or set()) | {n.strip().lower() for n in v.split(b",") if n.strip()}
    if listed is None:
        return None
    out: list[tuple[bytes, bytes]] = []
    for k, v in raw:
        if k == _ENCODED_RAW:
            continue
        if k in listed:
            value = b64decode(v)
            if value is not None:
                v = value
            if k.startswith(_HEX_RAW):
                try:
                    k = bytes.fromhex(k[len(_HEX_RAW) :].decode("latin-1"))
                except ValueError:
                    pass
        out.append((k, v))
    return out


# --------------------------------------------------------------------------- log lines


def printable(text: str) -> str:
    """`text` safe for one log line: control characters (CR, LF, NUL, ESC, DEL, C1, U+2028/9) and
    the backslash are escaped (`\\r`, `\\x1b`, `\\u2028`, `\\\\`), so a key or a header value cannot
    start a forged log line or hide what it is. Anything else is kept."""
    if not _CONTROL.search(text) and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif _CONTROL.match(ch):
            out.append(
                {"\r": "\\r", "\n": "\\n", "\t": "\\t"}.get(ch)
                or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
            )
        else:
            out.append(ch)
    return "".join(out)


__all__ = [
    "ENCODED_HEADER",
    "KEY_HEADER",
    "HEX_NAME_PREFIX",
    "MAX_KEY_BYTES",
    "b64encode",
    "b64decode",
    "plain_value",
    "plain_name",
    "hex_name",
    "key_id",
    "position_id",
    "is_key_itself",
    "key_of",
    "decode_headers",
    "printable",
]
