"""The web console (docs/console.md): groups and lag, dead letters by error class with their
records, and replay with a dry-run preview, served by the service under app.toml's
`console_path` when `console_token` is set (off otherwise).

Pages are rendered on the server (pages.py), guarded by the token (auth.py), and do their work
with the functions of :mod:`freedom.ops` in worker threads (routes.py).
"""

from freedom.console.routes import install

__all__ = ["install"]
