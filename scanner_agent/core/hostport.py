"""Parse a ``host:port`` listen address (``127.0.0.1:9464``, ``[::1]:9464``, ``localhost:9464``).

Pure text: the caller binds. A malformed address raises ``ValueError`` saying what is wrong, so a
config key can name itself in front of it.
"""

from __future__ import annotations

import re

_IPV6 = re.compile(r"^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*$"
)


def parse_host_port(text: str) -> tuple[str, int]:
    """``(host, port)`` from ``host:port``; an IPv6 host is written in brackets. Port 1–65535."""
    raw = text.strip()
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not host:port (an IPv6 address is written [::1]:9464)")
        port_text = rest[1:]
        if not _IPV6.match(host):
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address")
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not host:port, e.g. 127.0.0.1:9464")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
        if not _HOSTNAME.match(host):
            raise ValueError(f"{text!r}: {host!r} is not a host name or address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)
