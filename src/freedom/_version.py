"""The distribution's name and version (`freedom.__version__`, `freedom --version`)."""

from importlib import metadata as _metadata
from pathlib import Path as _Path

DISTRIBUTION = "freedom-events"


def _version() -> str:
    """The installed distribution's version; in a source tree that is not installed, pyproject's."""
    try:
        return _metadata.version(DISTRIBUTION)
    except _metadata.PackageNotFoundError:
        import tomllib

        try:
            with open(_Path(__file__).resolve().parents[2] / "pyproject.toml", "rb") as f:
                project = tomllib.load(f)["project"]
            if project["name"] == DISTRIBUTION:
                return str(project["version"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return "0+unknown"


__version__ = _version()
