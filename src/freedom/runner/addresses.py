"""Where the consumer proxy delivers: the base URL that follows the listen address, and whether a
`proxy_addr` points at the service itself. Pure functions (a leaf module): the application
(application.py) and the server (server.py, `freedom run --workers`) share them."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def proxy_addr_for(listen_addr: str) -> str:
    """The base URL the consumer proxy reaches a service listening on `listen_addr` at: the same
    host and port, loopback when it listens on every interface (0.0.0.0 → 127.0.0.1, :: → [::1])."""
    host, _, port = listen_addr.rpartition(":")
    bare = host.strip("[]")
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        ip = None
    if not bare or (ip is not None and ip.is_unspecified and ip.version == 4):
        host = "127.0.0.1"
    elif ip is not None and ip.is_unspecified:
        host = "[::1]"
    elif ip is not None and ip.version == 6:
        host = f"[{bare}]"
    return f"http://{host}:{port}"


def port_of(url: str) -> int:
    """The port of a URL (its scheme's default when none is given)."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _on_this_machine(proxy_addr: str, listen_addr: str) -> tuple[bool, bool]:
    """(points at this machine: loopback or the listen host, and at the port it listens on)."""
    if proxy_addr == "inprocess":
        return False, False
    host, _, listen_port = listen_addr.rpartition(":")
    target = urlsplit(proxy_addr).hostname or ""
    local = is_loopback(target) or target == host.strip("[]")
    return local, local and str(port_of(proxy_addr)) == listen_port


def proxy_addr_mismatch(proxy_addr: str, listen_addr: str) -> bool:
    """True when `proxy_addr` points at this machine (loopback, or the listen host) but at another
    port than the one the service listens on: deliveries would go to some other process, or nowhere."""
    local, same_port = _on_this_machine(proxy_addr, listen_addr)
    return local and not same_port


def proxy_addr_is_self(proxy_addr: str, listen_addr: str) -> bool:
    """True when `proxy_addr` is plain `http://` to this machine at the port the service listens on
    (no path): the proxy delivers to the service itself."""
    parts = urlsplit(proxy_addr)
    return (
        parts.scheme == "http"
        and parts.path in ("", "/")
        and _on_this_machine(proxy_addr, listen_addr)[1]
    )
