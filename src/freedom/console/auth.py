"""Who may use the web console: the token (app.toml `console_token`), a session cookie a login
with it sets, and the CSRF tokens its forms carry.

- **Bearer** (scripts): `Authorization: Bearer <token>`, compared in constant time. Wrong
  tokens, bearer and log-in alike, are slowed per client address (throttle.py).
- **Session** (browsers): logging in with the token sets an HttpOnly, SameSite=Strict cookie: a
  random nonce signed with itsdangerous (`URLSafeTimedSerializer`, its timestamp and `max_age`
  give the 12-hour expiry), under a key derived from the token: nothing is stored, a new token
  ends every session, and logging out revokes the session's nonce.
- **CSRF**: a form posted with a session carries `csrf`, the session's nonce signed for that
  purpose (the SameSite cookie already keeps other sites' forms out; the token is the second
  lock). A replay run also carries the parameters its dry run previewed, signed, so only a
  previewed replay runs.

Each purpose has its own salt (so its own derived key): a CSRF token is not a session, nor a
replay signature, and the other way round.

Why itsdangerous itself rather than Starlette's `SessionMiddleware` (built on it): the middleware
wraps the whole service's ASGI app, so every request (each delivered event too) would pass through
it, for a cookie only the console's few routes read; it sets one site-wide cookie where the
console's is limited to `console_path`; it would share `scope["session"]` with a
`SessionMiddleware` of the user's own app; and it cannot log one session out. Signing the three
values with itsdangerous in the console's own routes keeps all of that as it was.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadData, Signer, TimestampSigner, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.encoding import want_bytes

COOKIE = "freedom_console"
SESSION_SECONDS = 12 * 3600
_MAX_REVOKED = 10_000
#: HMAC-SHA256 (itsdangerous' default is SHA-1), each salt's key derived with HMAC too.
_SIGNING: dict[str, Any] = {"digest_method": hashlib.sha256, "key_derivation": "hmac"}


class _ExactSigner(Signer):
    """itsdangerous' signer, comparing the signature as sent with the one it computes.

    itsdangerous decodes the base64 of the signature before comparing, and decoding ignores the
    unused low bits of the last character: a value whose last character was changed from `Y` to
    `Z` would still verify. Comparing the text (in constant time) refuses every changed value.
    """

    def verify_signature(self, value: str | bytes, sig: str | bytes) -> bool:
        return hmac.compare_digest(want_bytes(sig), self.get_signature(value))


class _ExactTimestampSigner(_ExactSigner, TimestampSigner):
    """The same, for the timed (session) values."""


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
        self._sessions = URLSafeTimedSerializer(
            token,
            salt="freedom.console.session",
            signer=_ExactTimestampSigner,
            signer_kwargs=_SIGNING,
        )
        self._csrf = URLSafeSerializer(
            token, salt="freedom.console.csrf", signer=_ExactSigner, signer_kwargs=_SIGNING
        )
        self._replay = URLSafeSerializer(
            token, salt="freedom.console.replay", signer=_ExactSigner, signer_kwargs=_SIGNING
        )
        self._revoked: dict[str, float] = {}  # nonce -> expiry
        self._lock = threading.Lock()

    def token_ok(self, presented: str) -> bool:
        """`presented` is the token (constant time: digests of equal length are compared)."""
        return hmac.compare_digest(
            hashlib.sha256(presented.encode("utf-8", "replace")).digest(), self._digest
        )

    # ------------------------------------------------------------------ sessions

    def new_session(self) -> str:
        """A signed session value (`<nonce>.<timestamp>.<signature>`) that expires after
        SESSION_SECONDS."""
        return self._sessions.dumps(secrets.token_urlsafe(16))

    def _signed_session(self, value: str, max_age: int | None) -> tuple[str, float] | None:
        """The nonce and expiry (epoch seconds) of a session value this key signed (not older than
        `max_age` when given), else None."""
        try:
            nonce, signed_at = self._sessions.loads(value, max_age=max_age, return_timestamp=True)
        except (BadData, ValueError):  # forged, expired, malformed (ValueError: not UTF-8)
            return None
        if not isinstance(nonce, str) or not nonce:
            return None
        return nonce, signed_at.timestamp() + SESSION_SECONDS

    def session_ok(self, value: str) -> bool:
        """`value` is a session this key signed, not expired nor revoked."""
        signed = self._signed_session(value, SESSION_SECONDS)
        if signed is None:
            return False
        with self._lock:
            return signed[0] not in self._revoked

    def revoke(self, value: str) -> None:
        """Log a session out (its nonce is refused until it would have expired anyway)."""
        signed = self._signed_session(value, SESSION_SECONDS)
        if signed is None:
            return
        nonce, expiry = signed
        now = time.time()
        with self._lock:
            for n in [n for n, e in self._revoked.items() if e < now]:
                del self._revoked[n]
            if len(self._revoked) < _MAX_REVOKED:
                self._revoked[nonce] = expiry

    @property
    def revoked_count(self) -> int:
        """How many logged-out sessions are remembered (bounded; each forgotten once it would
        have expired anyway)."""
        with self._lock:
            return len(self._revoked)

    # ------------------------------------------------------------------ forms

    def csrf(self, session: str) -> str:
        """The CSRF token of a session's forms ("" for a value that is no session of this key)."""
        signed = self._signed_session(session, None)  # its expiry is the session check's business
        return self._csrf.dumps(signed[0]) if signed is not None else ""

    def csrf_ok(self, session: str, presented: str) -> bool:
        """`presented` is the CSRF token of `session`, not another session's (nor a forged one)."""
        signed = self._signed_session(session, None)
        if signed is None or not presented:
            return False
        try:
            return bool(self._csrf.loads(presented) == signed[0])
        except (BadData, ValueError):
            return False

    def replay_signature(self, params: Mapping[str, str]) -> str:
        """The signed parameters of a previewed replay, which its run must carry."""
        return self._replay.dumps(dict(sorted(params.items())))

    def replay_ok(self, params: Mapping[str, str], presented: str) -> bool:
        """`presented` is the signature of exactly these parameters (none added, none changed)."""
        if not presented:
            return False
        try:
            return bool(self._replay.loads(presented) == dict(params))
        except (BadData, ValueError):
            return False
