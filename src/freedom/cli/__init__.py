"""The `freedom` command (internal): argument parsing, loading `module:app`, `freedom config`,
`freedom asyncapi` and the operations commands. The entry point is `freedom.cli:main`."""

from freedom.cli.main import main

__all__ = ["main"]
