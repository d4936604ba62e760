"""``core.hostport``: the ``[metrics] listen`` address, parsed without touching the network."""

from __future__ import annotations

import pytest

from scanner_agent.core.hostport import parse_host_port


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_good(text: str, want: tuple[str, int]) -> None:
    assert parse_host_port(text) == want


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("9464", "not host:port"),
        (":9464", "not host:port"),
        ("127.0.0.1:0", "1 to 65535"),
        ("127.0.0.1:65536", "1 to 65535"),
        ("127.0.0.1:http", "1 to 65535"),
        ("::1:9464", "in brackets"),
        ("[::1]9464", "not host:port"),
        ("[zz]:9464", "not an IPv6 address"),
        ("bad host:9464", "not a host name"),
    ],
)
def test_bad_says_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_host_port(text)
