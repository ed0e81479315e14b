"""The one outbound HTTP client of the collector (webhooks, Slack, Telegram):
SSRF-hardened (PRODUCT.md §6).

For every request:

* only ``http``/``https`` URLs with a host, no credentials in the URL;
* the host is resolved once (A and AAAA, ``getaddrinfo``); the request is
  refused when ANY resolved address is loopback, private, link-local
  (169.254/16, fe80::/10), a cloud metadata address, multicast, reserved,
  unspecified, shared address space (100.64/10), or an IPv4-mapped,
  IPv4-compatible, 6to4, Teredo or NAT64 form of such an address;
* the connection goes to the address that was checked (the TCP connect is
  pinned to it; the Host header, TLS SNI and certificate check use the name):
  no second lookup, so DNS rebinding cannot swap the target;
* no redirects (a 3xx answer is a failure), connect/read timeouts and an
  overall deadline, a cap on the response size, no proxies from the
  environment.

An explicit allowlist (``Z4J_OUTBOUND_ALLOW``: entries separated by commas or
spaces) opens internal targets: ``host:port`` (a name or an IP, ``[v6]:port``)
admits that exact host and port whatever it resolves to; a CIDR (``10.1.0.0/16``)
or a bare IP admits those addresses on any port.

    client = OutboundClient(Allowlist.from_env())
    response = await client.request("POST", url, json_body={...})   # OutboundError on any failure
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore
import msgspec

from z4j_collector.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0
TOTAL_TIMEOUT_S = 20.0
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "z4j-collector"

# Never global, whatever the ipaddress module of this Python says.
_BLOCKED: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "2001:db8::/32", "100::/64",
    "2001::/23",
))
_METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200",
                                                 "169.254.170.2")}
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_V4_COMPAT = ipaddress.ip_network("::/96")
_TEREDO = ipaddress.ip_network("2001::/32")


class OutboundError(Exception):
    """A request that failed; ``reason`` is one line. ``retryable``: a later try may work."""

    def __init__(self, reason: str, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class OutboundRefused(OutboundError):
    """Refused by policy before anything was sent (never retryable)."""


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` may not be reached without an allowlist entry, else None."""
    kind = _kind(address)
    return f"{address} is {kind}" if kind else None


def _kind(address: IPAddress) -> str | None:
    if address in _METADATA:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = None
        form = ""
        if address.ipv4_mapped is not None:
            embedded, form = address.ipv4_mapped, "IPv4-mapped"
        elif address in _TEREDO:
            return "a Teredo address"
        elif address.sixtofour is not None:
            embedded, form = address.sixtofour, "6to4"
        elif any(address in n for n in _NAT64):
            embedded, form = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
        elif address in _V4_COMPAT and int(address) > 1:
            embedded, form = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "IPv4-compatible"
        if embedded is not None:
            inner = _kind(embedded)
            return f"the {form} form of {embedded} ({inner})" if inner else None
    for kind, test in (("a loopback", "is_loopback"), ("a link-local", "is_link_local"),
                       ("a multicast", "is_multicast"), ("an unspecified", "is_unspecified"),
                       ("a reserved", "is_reserved"), ("a private", "is_private")):
        if getattr(address, test):
            return f"{kind} address"
    for network in _BLOCKED:
        if address.version == network.version and address in network:
            return f"in the non-public range {network}"
    if not address.is_global:
        return "not a public address"
    return None


@dataclass(frozen=True)
class Allowlist:
    """Internal targets an admin opened: exact (host, port) pairs and networks."""

    hosts: frozenset[tuple[str, int]] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str] | str, where: str = "Z4J_OUTBOUND_ALLOW") -> Allowlist:
        if isinstance(entries, str):
            entries = entries.replace(",", " ").split()
        hosts: set[tuple[str, int]] = set()
        networks: list[Network] = []
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            host, sep, port = entry.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
                raise ConfigError(f"{where}: {entry!r} is neither host:port nor an IP network (CIDR)")
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            if ":" in host:
                try:
                    host = str(ipaddress.IPv6Address(host))
                except ValueError:
                    raise ConfigError(f"{where}: {entry!r}: an IPv6 host is written [addr]:port") from None
            hosts.add((host.lower().rstrip("."), int(port)))
        return cls(frozenset(hosts), tuple(networks))

    @classmethod
    def from_env(cls) -> Allowlist:
        return cls.parse(os.environ.get("Z4J_OUTBOUND_ALLOW", ""))

    def admits_host(self, host: str, port: int) -> bool:
        return (host.lower().rstrip("."), port) in self.hosts

    def admits_address(self, address: IPAddress) -> bool:
        if address.version == 6 and address.ipv4_mapped is not None:
            mapped = address.ipv4_mapped
            if any(mapped in n for n in self.networks if n.version == 4):
                return True
        return any(address in n for n in self.networks if n.version == address.version)

    def describe(self) -> list[str]:
        return sorted(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts) + [
            str(n) for n in self.networks]


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    """As written in the URL (lower case, no brackets)."""
    port: int
    target: bytes
    """Path and query."""
    host_header: str


def parse_url(url: str) -> Target:
    """Check the URL's form; :class:`OutboundRefused` with the reason when it is not usable."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise OutboundRefused("the URL must be a string of 1 to 2048 characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise OutboundRefused("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise OutboundRefused(f"the URL is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise OutboundRefused(f"only http and https URLs are allowed, got {scheme or 'none'!r}")
    if parts.username is not None or parts.password is not None:
        raise OutboundRefused("credentials in the URL are not allowed")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise OutboundRefused("the URL has no host")
    default = 443 if scheme == "https" else 80
    port = port or default
    if not 0 < port < 65536:
        raise OutboundRefused(f"port {port} is out of range")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    shown = f"[{host}]" if ":" in host else host
    return Target(scheme, host, port, target.encode(), shown if port == default else f"{shown}:{port}")


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass
class OutboundResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    address: str
    """The address the request went to."""

    def json(self) -> Any:
        return msgspec.json.decode(self.body) if self.body else None


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects every TCP stream to the one checked address (no lookup)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        return await self.inner.connect_tcp(self.address, port, timeout=timeout, local_address=local_address,
                                            socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class OutboundClient:
    allowlist: Allowlist = field(default_factory=Allowlist)
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S
    total_timeout_s: float = TOTAL_TIMEOUT_S
    max_response_bytes: int = MAX_RESPONSE_BYTES
    ssl_context: ssl.SSLContext | None = None

    async def resolve(self, target: Target) -> list[IPAddress]:
        """The addresses to connect to, all checked; :class:`OutboundRefused` when any is not allowed."""
        literal = literal_address(target.host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
            except (socket.gaierror, UnicodeError) as exc:
                raise OutboundError(f"cannot resolve {target.host}: {exc}", retryable=True) from None
            addresses = []
            for info in infos:
                address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
                if address not in addresses:
                    addresses.append(address)
            if not addresses:
                raise OutboundError(f"{target.host} resolves to no address", retryable=True)
        if self.allowlist.admits_host(target.host, target.port):
            return addresses
        for address in addresses:
            why = refusal(address)
            if why is not None and not self.allowlist.admits_address(address):
                via = "" if literal is not None else f"{target.host} resolves to "
                raise OutboundRefused(f"refused: {via}{why} (not in the outbound allowlist)")
        return addresses

    async def check(self, url: str) -> list[IPAddress]:
        """Would ``url`` be allowed now? The checked addresses, or :class:`OutboundError`."""
        return await self.resolve(parse_url(url))

    async def request(self, method: str, url: str, *, json_body: Any = None, content: bytes | None = None,
                      headers: dict[str, str] | None = None) -> OutboundResponse:
        """One request; any status other than 2xx raises :class:`OutboundError` (3xx: redirects
        are not followed, 5xx and 429 are retryable)."""
        target = parse_url(url)
        addresses = await self.resolve(target)
        if json_body is not None:
            content = msgspec.json.encode(json_body)
        all_headers = {"Host": target.host_header, "User-Agent": USER_AGENT, "Accept": "*/*",
                       "Connection": "close"}
        if json_body is not None:
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        if content is not None:
            all_headers["Content-Length"] = str(len(content))
        try:
            return await asyncio.wait_for(self._send(method, target, addresses, all_headers, content),
                                          self.total_timeout_s)
        except asyncio.TimeoutError:
            raise OutboundError(f"no complete answer from {target.host_header} within {self.total_timeout_s:g} s",
                                retryable=True) from None

    async def _send(self, method: str, target: Target, addresses: list[IPAddress], headers: dict[str, str],
                    content: bytes | None) -> OutboundResponse:
        last: OutboundError | None = None
        for address in addresses:
            try:
                return await self._send_to(str(address), method, target, headers, content)
            except _ConnectFailed as exc:
                last = OutboundError(f"cannot connect to {target.host_header} ({address}): {exc.reason}",
                                     retryable=True)
        assert last is not None
        raise last

    async def _send_to(self, address: str, method: str, target: Target, headers: dict[str, str],
                       content: bytes | None) -> OutboundResponse:
        ssl_context = self.ssl_context or ssl.create_default_context()
        timeouts = {"connect": self.connect_timeout_s, "read": self.read_timeout_s, "write": self.read_timeout_s,
                    "pool": self.connect_timeout_s}
        url = httpcore.URL(scheme=target.scheme.encode(), host=target.host.encode(), port=target.port,
                           target=target.target)
        async with httpcore.AsyncConnectionPool(ssl_context=ssl_context, network_backend=_PinnedBackend(address),
                                                max_connections=1, retries=0, http1=True, http2=False) as pool:
            try:
                async with pool.stream(method.upper(), url, headers=list(headers.items()), content=content,
                                       extensions={"timeout": timeouts}) as response:
                    body = bytearray()
                    async for chunk in response.aiter_stream():
                        body += chunk
                        if len(body) > self.max_response_bytes:
                            raise OutboundError(f"the answer from {target.host_header} is larger than "
                                                f"{self.max_response_bytes} bytes")
                    status = response.status
                    got = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
            except httpcore.ConnectError as exc:
                raise _ConnectFailed(str(exc) or type(exc).__name__) from None
            except httpcore.ConnectTimeout:
                raise _ConnectFailed(f"no connection within {self.connect_timeout_s:g} s") from None
            except httpcore.TimeoutException as exc:
                raise OutboundError(f"{target.host_header} timed out ({type(exc).__name__})", retryable=True) from None
            except (httpcore.NetworkError, httpcore.ProtocolError, ssl.SSLError, OSError) as exc:
                raise OutboundError(f"{target.host_header}: {type(exc).__name__}: {exc}", retryable=True) from None
        if 300 <= status < 400:
            raise OutboundError(f"{target.host_header} answered {status} (redirect to "
                                f"{got.get('location', '?')[:200]}); redirects are not followed")
        if status >= 400:
            raise OutboundError(f"{target.host_header} answered {status}: {_snippet(body)}",
                                retryable=status >= 500 or status == 429)
        return OutboundResponse(status, got, bytes(body), address)


class _ConnectFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _snippet(body: bytes | bytearray, limit: int = 200) -> str:
    text = bytes(body[:limit]).decode("utf-8", "replace").replace("\n", " ").strip()
    return text or "(empty body)"
