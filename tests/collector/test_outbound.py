"""The SSRF-hardened outbound client (services/outbound.py): pure checks of
every address class, and real sockets on loopback: refusals before anything
is sent, the allowlist admitting a loopback server, a redirect from an
allowlisted server not followed, the connection pinned to the checked
address (no second lookup), the size cap and the read timeout."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from tests.support.receiver import Receiver
from z4j_collector.errors import ConfigError
from z4j_collector.services.outbound import (
    Allowlist, OutboundClient, OutboundError, OutboundRefused, refusal,
)

REFUSED = {
    "127.0.0.1": "loopback", "127.8.9.10": "loopback", "::1": "loopback", "10.0.0.1": "private",
    "172.16.5.4": "private", "192.168.1.1": "private", "169.254.169.254": "metadata", "169.254.1.1": "link-local",
    "fe80::1": "link-local", "fd00:ec2::254": "metadata", "fc00::5": "private", "100.64.0.1": "100.64.0.0/10",
    "224.0.0.1": "multicast", "239.255.255.250": "multicast", "ff02::1": "multicast", "0.0.0.0": "unspecified",
    "::": "unspecified", "240.0.0.1": "reserved", "255.255.255.255": "reserved",
    "::ffff:127.0.0.1": "IPv4-mapped form of 127.0.0.1", "::ffff:10.0.0.1": "IPv4-mapped form of 10.0.0.1",
    "::ffff:169.254.169.254": "IPv4-mapped form of 169.254.169.254", "::127.0.0.1": "IPv4-compatible",
    "2002:7f00:1::": "6to4 form of 127.0.0.1", "2002:a9fe:a9fe::1": "6to4 form of 169.254.169.254",
    "64:ff9b::7f00:1": "NAT64 form of 127.0.0.1", "2001::1": "Teredo", "192.0.2.7": "192.0.2.7 is a",
}


@pytest.mark.parametrize("address", sorted(REFUSED))
def test_refused_address_classes(address):
    why = refusal(ipaddress.ip_address(address))
    assert why is not None and REFUSED[address] in why, why


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                     "2002:808:808::1"])
def test_public_addresses_pass(address):
    assert refusal(ipaddress.ip_address(address)) is None


def test_allowlist_parsing():
    allow = Allowlist.parse("127.0.0.1:8080, hooks.internal:443 [::1]:9000 10.1.0.0/16 192.168.7.7")
    assert allow.admits_host("127.0.0.1", 8080) and not allow.admits_host("127.0.0.1", 8081)
    assert allow.admits_host("HOOKS.internal.", 443) and allow.admits_host("::1", 9000)
    assert allow.admits_address(ipaddress.ip_address("10.1.2.3"))
    assert allow.admits_address(ipaddress.ip_address("::ffff:10.1.2.3"))
    assert not allow.admits_address(ipaddress.ip_address("10.2.0.1"))
    assert allow.admits_address(ipaddress.ip_address("192.168.7.7"))
    for bad in ("hooks.internal", "host:0", "host:99999", ":80", "[fe80::zz]:80"):
        with pytest.raises(ConfigError, match="Z4J_OUTBOUND_ALLOW"):
            Allowlist.parse(bad)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def rx():
    with Receiver() as receiver:
        yield receiver


def refused(client: OutboundClient, url: str) -> str:
    with pytest.raises(OutboundRefused) as info:
        run(client.request("POST", url, json_body={"x": 1}))
    return info.value.reason


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "10.0.0.1", "169.254.169.254", "[::ffff:127.0.0.1]",
                                  "localhost"])
def test_refusals_send_nothing(rx, host):
    before = len(rx.requests())
    reason = refused(OutboundClient(), f"http://{host}:{rx.port}/refused")
    assert reason.startswith("refused: ") and "not in the outbound allowlist" in reason
    if host == "localhost":
        assert "localhost resolves to" in reason and "loopback" in reason
    assert len(rx.requests()) == before


@pytest.mark.parametrize("url, reason", [
    ("ftp://example.com/x", "only http and https"), ("file:///etc/passwd", "only http and https"),
    ("http://user:pw@example.com/", "credentials"), ("http:///path", "no host"), ("http://exa mple.com/", "spaces"),
    ("gopher://127.0.0.1:70/", "only http and https"),
])
def test_bad_urls(url, reason):
    assert reason in refused(OutboundClient(), url)


def test_any_resolved_address_refuses(monkeypatch, rx):
    async def fake(host, port, **kw):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]

    async def go():
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake)
        await OutboundClient().request("GET", "http://mixed.example/")

    with pytest.raises(OutboundRefused, match="mixed.example resolves to 10.0.0.7 is a private address"):
        run(go())


def test_allowlist_admits_loopback_server(rx):
    for allow in (f"127.0.0.1:{rx.port}", "127.0.0.0/8"):
        response = run(OutboundClient(Allowlist.parse(allow)).request("POST", rx.url("/ok?a=1"),
                                                                      json_body={"hello": "world"}))
        assert response.status == 200 and response.json() == {"ok": True} and response.address == "127.0.0.1"
        got = rx.requests("/ok")[-1]
        assert got.json() == {"hello": "world"} and got.path == "/ok?a=1"
        assert got.headers["Host"] == f"127.0.0.1:{rx.port}"
    # the entry is for this port only
    assert "not in the outbound allowlist" in refused(OutboundClient(Allowlist.parse(f"127.0.0.1:{rx.port + 1}")),
                                                      rx.url("/ok"))


def test_redirect_to_loopback_is_not_followed(rx):
    with Receiver() as inner:
        rx.script("/moved", 302, headers={"Location": inner.url("/inside")})
        client = OutboundClient(Allowlist.parse(f"127.0.0.1:{rx.port}"))
        with pytest.raises(OutboundError, match="answered 302 .*redirects are not followed") as info:
            run(client.request("GET", rx.url("/moved")))
        assert not info.value.retryable
        assert inner.requests() == []
        # even with both allowlisted, a redirect is a failure
        both = OutboundClient(Allowlist.parse(f"127.0.0.1:{rx.port} 127.0.0.1:{inner.port}"))
        rx.script("/moved2", 307, headers={"Location": inner.url("/inside")})
        with pytest.raises(OutboundError, match="redirect"):
            run(both.request("POST", rx.url("/moved2"), json_body={}))
        assert inner.requests() == []


def test_connection_is_pinned_to_the_checked_address(monkeypatch, rx):
    """Resolved once: a second answer (rebinding to the metadata address) is never asked for;
    the Host header carries the name."""
    calls = []

    async def fake(host, port, **kw):
        calls.append(host)
        address = "127.0.0.1" if len(calls) == 1 else "169.254.169.254"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    async def go():
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake)
        client = OutboundClient(Allowlist.parse(f"hooks.test:{rx.port}"))
        return await client.request("POST", f"http://hooks.test:{rx.port}/pinned", json_body={"n": 1})

    response = run(go())
    assert response.address == "127.0.0.1" and calls == ["hooks.test"]
    assert rx.requests("/pinned")[-1].headers["Host"] == f"hooks.test:{rx.port}"


def test_size_cap(rx):
    rx.script("/big", 200, body=b"x" * 5000)
    client = OutboundClient(Allowlist.parse("127.0.0.0/8"), max_response_bytes=4096)
    with pytest.raises(OutboundError, match="larger than 4096 bytes"):
        run(client.request("GET", rx.url("/big")))
    rx.script("/small", 200, body=b"y" * 4000)
    assert len(run(client.request("GET", rx.url("/small"))).body) == 4000


def test_read_timeout_and_errors_are_retryable(rx):
    rx.script("/slow", 200, delay=1.0, times=1)
    client = OutboundClient(Allowlist.parse("127.0.0.0/8"), read_timeout_s=0.2)
    with pytest.raises(OutboundError, match="timed out") as info:
        run(client.request("GET", rx.url("/slow")))
    assert info.value.retryable
    rx.script("/fail", 503, body=b"down for maintenance", times=1)
    with pytest.raises(OutboundError, match="answered 503: down for maintenance") as info:
        run(client.request("GET", rx.url("/fail")))
    assert info.value.retryable
    rx.script("/gone", 404, times=1)
    with pytest.raises(OutboundError, match="answered 404") as info:
        run(client.request("GET", rx.url("/gone")))
    assert not info.value.retryable
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OutboundError, match="cannot connect") as info:
        run(client.request("GET", f"http://127.0.0.1:{port}/"))
    assert info.value.retryable
