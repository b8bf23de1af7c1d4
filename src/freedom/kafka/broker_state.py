"""Where a running embedded broker is recorded, so that other processes of the same config directory
find it: the operations commands (`freedom status`, `freedom dlq`, `freedom offsets reset`),
`freedom proxy`, the web console, and services when `freedom broker` runs it.

The record is `<config dir>/.freedom/embedded-broker.json` (and, for `freedom broker`, also
`<data dir>/embedded-broker.json`)::

    {"bootstrap": "127.0.0.1:40123", "pid": 4242, "owner": "service", "broker_pid": 4250,
     "storage": "memory", "started_at": "2026-12-02T00:16:09.391Z", "log": null}

`pid` is the process that runs the broker (the service; the `freedom run --reload` or `--workers`
parent; `freedom broker`), `owner` says which. It is written atomically (a temporary file renamed
over it) once the broker answers, and removed when that process stops the broker. A process killed
with SIGKILL leaves it behind: a record whose process is gone, or whose address refuses
connections, is *stale*, and is ignored with a message saying so. Only a loopback address is taken
from it: the embedded broker never listens anywhere else.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "STATE_DIR",
    "STATE_FILE",
    "BrokerRecord",
    "Probe",
    "loopback_bootstrap",
    "probe",
    "remove_record",
    "state_file",
    "write_record",
]

#: The directory, inside a config directory, that holds the record (and `freedom broker`'s log).
STATE_DIR = ".freedom"
#: The record's file name.
STATE_FILE = "embedded-broker.json"
#: Owners, as recorded.
SERVICE = "service"
BROKER_COMMAND = "freedom broker"


def state_file(config_dir: Path) -> Path:
    """The record of the embedded broker of the services of `config_dir`."""
    return config_dir / STATE_DIR / STATE_FILE


def now_iso() -> str:
    return (
        datetime.datetime.now(datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def loopback_bootstrap(value: str) -> str | None:
    """`127.0.0.1:PORT` for a loopback address with a port (`localhost:PORT` too), else None."""
    host, _, port = value.rpartition(":")
    if (
        host not in ("127.0.0.1", "localhost")
        or not (port.isascii() and port.isdigit())
        or not 0 < int(port) < 65536
    ):
        return None
    return f"127.0.0.1:{int(port)}"


@dataclass(frozen=True)
class BrokerRecord:
    """A running embedded broker, as recorded."""

    bootstrap: str  # 127.0.0.1:PORT
    pid: int  # the process that runs the broker and removes the record when it stops it
    owner: str  # "service", "freedom run --reload", "freedom run --workers", "freedom broker"
    broker_pid: int | None = None  # the Tansu process
    storage: str = "memory"  # "memory" or "postgres" (never the URL: it may hold a password)
    started_at: str = ""
    log: str | None = None  # freedom broker's log file

    @property
    def who(self) -> str:
        """`freedom broker (pid 4242)`, `the service (pid 4242)`."""
        name = "the service" if self.owner == SERVICE else self.owner
        return f"{name} (pid {self.pid})"


def write_record(path: Path, record: BrokerRecord) -> None:
    """Write `record` to `path` atomically (a reader sees the old file or the new one, whole).

    A `.freedom` directory gets a `.gitignore` of `*`: what it holds is this machine's."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    ignore = directory / ".gitignore"
    if directory.name == STATE_DIR and not ignore.exists():
        ignore.write_text("# written by freedom: this machine's running embedded broker\n*\n")
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    data = json.dumps(asdict(record), indent=2) + "\n"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read(path: Path) -> BrokerRecord:
    """The record at `path`; ValueError (its reason) when it is not one freedom wrote."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    bootstrap = raw.get("bootstrap")
    pid = raw.get("pid")
    if not isinstance(bootstrap, str) or loopback_bootstrap(bootstrap) is None:
        raise ValueError(f"bootstrap must be 127.0.0.1:PORT, got {bootstrap!r}")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ValueError(f"pid must be a process id, got {pid!r}")
    broker_pid = raw.get("broker_pid")
    log = raw.get("log")
    return BrokerRecord(
        bootstrap=str(loopback_bootstrap(bootstrap)),
        pid=pid,
        owner=str(raw.get("owner") or "?"),
        broker_pid=broker_pid if isinstance(broker_pid, int) else None,
        storage=str(raw.get("storage") or "memory"),
        started_at=str(raw.get("started_at") or ""),
        log=log if isinstance(log, str) else None,
    )


def remove_record(path: Path, record: BrokerRecord) -> None:
    """Remove the record at `path` if it is still `record` (another process may have replaced it)."""
    try:
        current = _read(path)
    except (OSError, ValueError):
        return
    if (current.pid, current.bootstrap) == (record.pid, record.bootstrap):
        path.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """True while process `pid` runs (a zombie, ended but not reaped yet, has ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    try:  # Linux: the state letter follows the command name in parentheses
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def port_answers(bootstrap: str, timeout: float = 1.0) -> bool:
    """True when a TCP connection to `127.0.0.1:PORT` opens."""
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Probe:
    """What the record at `path` says: a live broker (`record`), or why there is none (`problem`)."""

    path: Path
    record: BrokerRecord | None
    problem: str | None  # None with no record: there is no file


def probe(path: Path) -> Probe:
    """Read the record at `path` and check that its broker runs: its process exists and its
    address accepts connections."""
    try:
        record = _read(path)
    except FileNotFoundError:
        return Probe(path, None, None)
    except OSError as exc:
        return Probe(path, None, f"{path} cannot be read ({exc.strerror}): ignored")
    except ValueError as exc:
        return Probe(path, None, f"{path} is not a broker record freedom wrote ({exc}): ignored")
    if not pid_alive(record.pid):
        return Probe(
            path,
            None,
            f"{path} is stale: {record.who}, which ran the embedded broker at {record.bootstrap}, "
            "is no longer running (the file is ignored)",
        )
    if not port_answers(record.bootstrap):
        return Probe(
            path,
            None,
            f"{path} is stale: the embedded broker of {record.who} at {record.bootstrap} refuses "
            "connections (the file is ignored)",
        )
    return Probe(path, record, None)
