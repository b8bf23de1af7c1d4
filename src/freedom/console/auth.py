"""Who may use the web console: the token (app.toml `console_token`), a session cookie a login
with it sets, and the CSRF tokens its forms carry.

- **Bearer** (scripts): `Authorization: Bearer <token>`, compared in constant time.
- **Session** (browsers): logging in with the token sets an HttpOnly, SameSite=Strict cookie
  `<expiry>.<nonce>.<mac>`, signed with a key derived from the token: nothing is stored, a new
  token ends every session, and logging out revokes the session's nonce.
- **CSRF**: a form posted with a session carries `csrf`, a MAC of the session (the SameSite
  cookie already keeps other sites' forms out; the token is the second lock). A replay run also
  carries the MAC of the parameters its dry run previewed, so only a previewed replay runs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

COOKIE = "freedom_console"
SESSION_SECONDS = 12 * 3600
_MAX_REVOKED = 10_000


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: with the token itself (bearer) or a session of a login."""

    how: str  # "bearer" or "session"
    session: str | None  # the session cookie's value (None for bearer)
    address: str  # the client's address, for the audit line


class Keys:
    """The console's secrets, all derived from the token."""

    def __init__(self, token: str) -> None:
        self._digest = hashlib.sha256(token.encode()).digest()
        self._key = hmac.new(b"freedom-console", token.encode(), hashlib.sha256).digest()
        self._revoked: dict[str, float] = {}  # nonce -> expiry
        self._lock = threading.Lock()

    def token_ok(self, presented: str) -> bool:
        """`presented` is the token (constant time: digests of equal length are compared)."""
        return hmac.compare_digest(
            hashlib.sha256(presented.encode("utf-8", "replace")).digest(), self._digest
        )

    def mac(self, purpose: str, text: str) -> str:
        return hmac.new(
            self._key, f"{purpose}\0{text}".encode("utf-8", "replace"), hashlib.sha256
        ).hexdigest()

    def mac_ok(self, purpose: str, text: str, presented: str) -> bool:
        return hmac.compare_digest(
            self.mac(purpose, text).encode(), presented.encode("utf-8", "replace")
        )

    # ------------------------------------------------------------------ sessions

    def new_session(self) -> str:
        """A signed session value that expires after SESSION_SECONDS."""
        body = f"{int(time.time()) + SESSION_SECONDS}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self.mac('session', body)}"

    def session_ok(self, value: str) -> bool:
        """`value` is a session this key signed, not expired nor revoked."""
        body, _, mac = value.rpartition(".")
        expiry, _, nonce = body.partition(".")
        if not (expiry.isascii() and expiry.isdigit() and len(expiry) < 12 and nonce and mac):
            return False
        if not self.mac_ok("session", body, mac) or int(expiry) < time.time():
            return False
        with self._lock:
            return nonce not in self._revoked

    def revoke(self, value: str) -> None:
        """Log a session out (its nonce is refused until it would have expired anyway)."""
        if not self.session_ok(value):
            return
        expiry, nonce = value.split(".")[:2]
        now = time.time()
        with self._lock:
            for n in [n for n, e in self._revoked.items() if e < now]:
                del self._revoked[n]
            if len(self._revoked) < _MAX_REVOKED:
                self._revoked[nonce] = float(expiry)

    def csrf(self, session: str) -> str:
        """The CSRF token of a session's forms."""
        return self.mac("csrf", session)
