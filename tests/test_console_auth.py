"""The web console's credentials (freedom.console.auth, docs/console.md "Security"): the token, the
signed session cookie, its expiry and log-out, the CSRF token of a session and the replay
preview's signature. Without a service: tests/test_console.py drives them through the pages."""

from __future__ import annotations

import string
import time

import pytest

from freedom.console import auth
from freedom.console.auth import SESSION_SECONDS, Keys

TOKEN = "console-Token-for-tests-7f3a9c"
B64 = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"  # base64url's order


def flipped(c: str, bit: int = 1) -> str:
    """`c` (a base64url character, or the separator) changed in one bit of its 6."""
    return B64[B64.index(c) ^ bit] if c in B64 else "A"


@pytest.fixture
def keys() -> Keys:
    return Keys(TOKEN)


def later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The wall clock `seconds` from now (itsdangerous and the revocation list read time.time())."""
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + seconds)


def test_the_token_is_checked(keys):
    assert keys.token_ok(TOKEN)
    for wrong in ("", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "é" * 30, "\ud800"):
        assert not keys.token_ok(wrong), wrong


def test_a_new_session_is_accepted_and_holds_no_token(keys):
    session = keys.new_session()
    assert keys.session_ok(session)
    assert TOKEN not in session and set(session) <= set(B64 + ".")  # cookie-safe as it is
    assert session != keys.new_session()  # each log-in its own
    assert Keys(TOKEN).session_ok(session)  # nothing stored: another instance with the token


def test_a_tampered_session_is_refused_whichever_character_changed(keys):
    session = keys.new_session()
    for i, c in enumerate(session):
        for bit in (1, 2, 32):
            forged = session[:i] + flipped(c, bit) + session[i + 1 :]
            assert not keys.session_ok(forged), (i, c, bit)
    # itsdangerous alone accepts a last character changed in base64's unused low bits
    assert not keys.session_ok(session[:-1] + flipped(session[-1]))
    assert not keys.session_ok(session[:-2])
    assert not keys.session_ok(session + "A")


@pytest.mark.parametrize(
    "value",
    ["", ".", "..", "abc", "a.b.c", "x" * 5000, "é.é.é", "\ud800.a.b", "\x00"],
)
def test_malformed_sessions_are_refused(keys, value):
    assert not keys.session_ok(value)
    keys.revoke(value)  # and log-out ignores them
    assert keys.csrf(value) == "" and not keys.csrf_ok(value, "")


def test_a_session_of_another_token_is_refused(keys):
    other = Keys(TOKEN + "-rotated")
    assert not keys.session_ok(other.new_session())
    assert not other.session_ok(keys.new_session())  # a new token ends every session


def test_a_session_expires_after_twelve_hours(keys, monkeypatch):
    session = keys.new_session()
    later(monkeypatch, SESSION_SECONDS - 5)
    assert keys.session_ok(session)
    later(monkeypatch, SESSION_SECONDS + 5)
    assert not keys.session_ok(session)


def test_a_session_from_the_future_is_refused(keys, monkeypatch):
    later(monkeypatch, 3600)
    session = keys.new_session()
    monkeypatch.undo()
    assert not keys.session_ok(session)


def test_logging_out_revokes_that_session_only(keys, monkeypatch):
    one, two = keys.new_session(), keys.new_session()
    keys.revoke(one)
    assert not keys.session_ok(one) and keys.session_ok(two)
    # Forgotten once it would have expired anyway (the list stays small).
    later(monkeypatch, SESSION_SECONDS + 5)
    keys.revoke(keys.new_session())
    assert keys.revoked_count == 1


def test_the_revocation_list_is_bounded(keys, monkeypatch):
    monkeypatch.setattr(auth, "_MAX_REVOKED", 3)
    sessions = [keys.new_session() for _ in range(5)]
    for s in sessions:
        keys.revoke(s)
    assert keys.revoked_count == 3


def test_a_session_s_csrf_token_is_its_own(keys):
    one, two = keys.new_session(), keys.new_session()
    token = keys.csrf(one)
    assert token and token == keys.csrf(one)  # the same on every page of the session
    assert keys.csrf_ok(one, token)
    assert not keys.csrf_ok(two, token)  # another session's token
    assert not keys.csrf_ok(one, keys.csrf(two))
    assert not keys.csrf_ok(one, Keys(TOKEN + "-rotated").csrf(one))  # another key's
    for wrong in ("", "0" * 64, token[:-1], token + "x", one):  # the cookie is no CSRF token
        assert not keys.csrf_ok(one, wrong), wrong
    assert not keys.csrf_ok(one, token[:-1] + flipped(token[-1]))
    assert not keys.session_ok(token)  # nor a CSRF token a session


def test_the_replay_signature_covers_exactly_the_previewed_parameters(keys):
    params = {"topic": "fail-orders", "grep": "HTTP 422", "rate": "5"}
    signature = keys.replay_signature(params)
    assert keys.replay_ok(params, signature)
    assert keys.replay_ok(dict(reversed(params.items())), signature)  # the order does not matter
    assert not keys.replay_ok({**params, "grep": "HTTP 500"}, signature)  # changed
    assert not keys.replay_ok({**params, "key": "K"}, signature)  # added
    assert not keys.replay_ok({"topic": "fail-orders"}, signature)  # removed
    assert not keys.replay_ok(params, "")
    assert not keys.replay_ok(params, Keys(TOKEN + "-rotated").replay_signature(params))
    session = keys.new_session()
    assert not keys.replay_ok(params, keys.csrf(session))  # each purpose its own key
    assert not keys.csrf_ok(session, signature)
