"""The `freedom` command (internal): argument parsing, loading `module:app`, `freedom config`.
The entry point is `freedom.cli.main:main`."""
