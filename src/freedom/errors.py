"""The exceptions freedom raises for user mistakes: one clear message each."""

from __future__ import annotations


class FreedomError(Exception):
    """Base class of every error freedom raises on purpose."""


class ConfigError(FreedomError):
    """A configuration file is missing something, or holds a wrong key or value.

    The message names the file, the key and what is wrong, on one line.
    """

    def __init__(self, file: str, key: str | None, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {problem}")


class RouteError(FreedomError):
    """A controller or event binding cannot be turned into a route."""


class PublishError(FreedomError):
    """A message could not be published (broker down, timed out, rejected)."""


class UnknownClientError(FreedomError, KeyError):
    """A message selected a producer client name that kafka.toml does not define."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
