"""Operations tooling: `freedom status`, `freedom dlq list|show|replay|purge`,
`freedom offsets reset`.

Each command is a plain function returning dataclasses (the web console calls the same ones);
:mod:`freedom.cli.ops` parses the arguments and prints the results. The cluster is reached with
the service's own configuration (`module:app` or its config directory), as `freedom run` does.
"""
