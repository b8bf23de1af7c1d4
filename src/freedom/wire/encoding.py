"""How a record's key and headers travel in an HTTP request, and back (docs/contract.md,
"Keys and header values HTTP cannot carry").

Record keys and header values are bytes; HTTP cannot carry every byte. This leaf module holds
the one rule, used by every transport (HTTP/1.1, h2c, in-process) to encode and by freedom's
`Request` to decode, so that any key and any header reach the handler intact:

- **Header values.** A value that is UTF-8 text without control characters (C0, DEL, C1) and
  without a leading or trailing space travels as it is. Any other value travels base64url
  (no padding), and its header name is listed in `x-freedom-encoded` (comma-separated). When one
  value of a name is encoded, every value of that name is.
- **Header names.** A name that is not an HTTP token (or that starts with `x-freedom-hex-`, `_`
  read as `-`) travels as `x-freedom-hex-<lowercase hex of its bytes>`, its value base64url, and is
  listed in `x-freedom-encoded` too. HTTP header names are case-insensitive: token names arrive
  lowercased.
- **The event id** (the route's path parameter and `x-message-key`): the key itself when it is
  *plain text*: UTF-8, 1 to :data:`MAX_KEY_BYTES` bytes, no control characters, no leading or
  trailing space, not `.` or `..`, and not starting with `~`. Every other id starts with `~`:
  `~b64.<base64url of the key>` (a key that is not plain text, up to `MAX_KEY_BYTES`),
  `~sha256.<hex digest>` (a longer key) or `~pos.<topic>.<partition>.<offset>` (a record without
  a key, at the position where it was first read). The mapping is one-to-one: two different
  records never share an id (up to SHA-256 collisions for keys over `MAX_KEY_BYTES`).
- **The full key**: whenever the id is not the key itself and the record has a key,
  `x-freedom-key` carries it, base64url.

It also holds the rule for showing such text to a person (:func:`printable`, :func:`escape_controls`,
:func:`printable_json`: control and bidirectional characters escaped; docs/operations.md, "Control
and bidirectional characters"), which is not the wire's: a plain key may hold a bidirectional
control and still travel as it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

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
    """True when a header name travels as it is: an HTTP token not in freedom's hex-name space
    (`x_freedom_hex_...` is in it too: WSGI servers read `_` as `-`, headers.header_key)."""
    return bool(_TOKEN.fullmatch(name)) and not name.lower().replace(b"_", b"-").startswith(
        _HEX_RAW
    )


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


# --------------------------------------------------------------------------- text a person reads
#
# THE rule for every text from outside (record keys, header values, error texts, topic, group and
# client names a broker reports) shown to a person: the `freedom status` / `freedom dlq` output,
# their JSON, the web console and the service's log lines (docs/operations.md, "Control and
# bidirectional characters"). These characters are never shown as they are: C0 controls (tab, CR
# and LF included), DEL, C1 controls, the Unicode line and paragraph separators, and the
# bidirectional controls, which reorder what a terminal or a browser shows ("order-\u202e1337\u202c"
# would read "order-7331"). A terminal takes ESC and the C1 controls as commands (clear the
# screen, write the clipboard: OSC 52), CR and LF start a forged line.

_NOT_C0_ESCAPED = (
    r"\x7f-\x9f"  # DEL, C1 controls (CSI, OSC, NEL, ...)
    r"\u061c\u200e\u200f"  # ARABIC LETTER MARK, LEFT-TO-RIGHT MARK, RIGHT-TO-LEFT MARK
    r"\u2028\u2029"  # LINE SEPARATOR, PARAGRAPH SEPARATOR
    r"\u202a-\u202e"  # LRE, RLE, PDF, LRO, RLO: embeddings and overrides
    r"\u2066-\u2069"  # LRI, RLI, FSI, PDI: isolates
)
#: The characters shown escaped, as the body of a regular-expression character class.
SHOWN_ESCAPED = r"\x00-\x1f" + _NOT_C0_ESCAPED  # C0 controls (TAB, LF, CR, ESC too), then the rest
_ESCAPED = re.compile(f"[{SHOWN_ESCAPED}]")
_ESCAPED_OR_BACKSLASH = re.compile(f"[{SHOWN_ESCAPED}\\\\]")
_NOT_C0 = re.compile(f"[{_NOT_C0_ESCAPED}]")  # json.dumps escapes C0 in strings itself
_SHORT = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _escape(ch: str) -> str:
    """One character as its escape: `\\r`, `\\n`, `\\t`, else `\\xNN` (below U+0100) or `\\uNNNN`."""
    return _SHORT.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def printable(text: str) -> str:
    """`text` as a person is shown it: each character of :data:`SHOWN_ESCAPED` as an escape
    (`\\r`, `\\n`, `\\t`, `\\x1b`, `\\x85`, `\\u202e`) and the backslash doubled (`\\\\`), so that
    what is shown is unambiguous, copy-pasteable (Python's and JSON's escapes) and one line; a key
    or header value cannot start a forged log line, drive the terminal or hide what it is.
    Anything else (any other letter, `购买`) is kept."""
    if not _ESCAPED.search(text) and "\\" not in text:
        return text
    return _ESCAPED_OR_BACKSLASH.sub(
        lambda m: "\\\\" if m.group() == "\\" else _escape(m.group()), text
    )


def escape_controls(text: str) -> str:
    """The same rule for text composed of :func:`printable` parts (a whole output line, a page cell,
    a log line's argument): the characters of :data:`SHOWN_ESCAPED` still in it are escaped, and
    backslashes are left alone, so the printable parts are not escaped twice. The safety net under
    every output; text from outside goes through :func:`printable` first."""
    if not _ESCAPED.search(text):
        return text
    return _ESCAPED.sub(lambda m: _escape(m.group()), text)


def printable_json(value: Any, **kwargs: Any) -> str:
    """`json.dumps(value, ensure_ascii=False, **kwargs)` with every character of
    :data:`SHOWN_ESCAPED` as a JSON escape (`\\u001b`, `\\u202e`): `ensure_ascii=False` alone leaves
    DEL, the C1, separator and bidirectional characters raw. Other text stays as it is (`购买`),
    and the value reads back unchanged (`json.loads`)."""
    text = json.dumps(value, ensure_ascii=False, **kwargs)  # C0 in strings: escaped by json
    return _NOT_C0.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


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
    "SHOWN_ESCAPED",
    "printable",
    "escape_controls",
    "printable_json",
]
