"""The secrets of the configuration: the shared secret of the consumer proxy and its checks.

`[consumer]` and each `[[subscriptions]]` entry give the shared secret as `secret` or, better, as
`secret_env` (the environment variable holding it); :func:`read_secret` resolves and checks it.
app.toml's `console_token` takes the same minimum length (:data:`MIN_SECRET_LENGTH`).

:class:`KeySource` is what :func:`read_secret` and the TLS/SASL keys' reader
(:func:`freedom.config.librdkafka.security_settings`) read a table through: :class:`Keys` is one
over the fields of a validated model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel

#: The shortest shared secret (and console token) accepted.
MIN_SECRET_LENGTH = 16


class KeySource(Protocol):
    """One table of kafka.toml, as :func:`read_secret` and `security_settings` read it."""

    data: dict[str, Any]

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any: ...

    def error(self, name: str, problem: str) -> Exception: ...


class Keys:
    """The given keys `names` of a validated model as a :class:`KeySource` (types already
    checked); `error` makes the exception a problem with one of them raises."""

    def __init__(
        self, model: BaseModel, names: tuple[str, ...], error: Callable[[str, str], Exception]
    ) -> None:
        self.data: dict[str, Any] = {
            n: getattr(model, n) for n in names if getattr(model, n) is not None
        }
        self._error = error

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        return self.data.pop(name, default)

    def error(self, name: str, problem: str) -> Exception:
        return self._error(name, problem)


def read_secret(t: KeySource) -> str | None:
    """The shared secret of a table: from `secret_env` (an environment variable) or `secret`.

    Errors name the key and, for `secret_env`, the variable, never the value.
    """
    secret: str | None = t.get("secret", str, None)
    env = t.get("secret_env", str, None)
    if secret is not None and env is not None:
        raise t.error("secret", "is given twice (as secret and secret_env); keep secret_env")
    key = "secret"
    if env is not None:
        key = "secret_env"
        if not env:
            raise t.error(
                "secret_env", 'must name an environment variable, like "FREEDOM_PROXY_SECRET"'
            )
        secret = os.environ.get(env)
        if not secret:
            raise t.error("secret_env", f"the environment variable {env} is not set (or empty)")
    if secret is None:
        return None
    if (
        len(secret) < MIN_SECRET_LENGTH
        or not secret.isascii()
        or any(c in secret for c in "\r\n\0")
    ):
        raise t.error(
            key,
            f"the secret must be at least {MIN_SECRET_LENGTH} printable ASCII characters; "
            "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
        )
    return secret
