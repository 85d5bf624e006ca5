"""Where the operator may send requests (net.http capabilities, notifications).

Refused by default: link-local addresses (169.254.0.0/16 and fe80::/10, which hold most cloud metadata
services), the cloud metadata addresses outside link-local (METADATA_ADDRESSES), loopback, unspecified,
multicast and reserved addresses, and the control plane: its listed endpoints, and every port of the API
server's own addresses as the operator learns them (ControlPlaneAddresses). An IPv6 address that carries an
IPv4 one (IPv4-mapped, IPv4-compatible, 6to4, NAT64) is checked as both. A DNS name is resolved first and
every address it resolves to is checked, so a name cannot smuggle a refused address. Loopback can be
allowed for local environments and tests (never the control plane's ports).

`http_client` enforces the rules where it counts, when a connection is opened: the name is resolved once,
every address checked, and the connection made to a checked address, so a DNS answer that changes between
a check and the connection (DNS rebinding) cannot reach a refused address. Proxies from the environment
are ignored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx


class EgressRefused(ValueError):
    pass


# Cloud metadata services outside link-local space (169.254.169.254 and fe80::/10 are refused as a whole).
METADATA_ADDRESSES: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {
    ipaddress.ip_address("fd00:ec2::254"): "the AWS metadata service (IPv6)",
    ipaddress.ip_address("100.100.100.200"): "the Alibaba Cloud metadata service",
    ipaddress.ip_address("168.63.129.16"): "the Azure WireServer",
}
# Names that resolve to a metadata service inside a cloud's network: refused before any DNS answer.
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address leads to, if it carries one."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip in _NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):  # NAT64, IPv4-compatible (::a.b.c.d)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class ControlPlaneAddresses:
    """The API server's own addresses (host, port), learned at run time from the `kubernetes`
    EndpointSlice of `default` (the Service VIP alone is not enough: a node address reaches it too).
    Shared by every EgressRules, replaced as a whole on each refresh."""

    def __init__(self) -> None:
        self._endpoints: frozenset[tuple[str, int]] = frozenset()

    def replace(self, endpoints: Iterable[tuple[str, int]]) -> None:
        self._endpoints = frozenset((str(ipaddress.ip_address(h)), int(p)) for h, p in endpoints)

    @property
    def endpoints(self) -> frozenset[tuple[str, int]]:
        return self._endpoints

    def refuses(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        # Every port of a real address (other services of the control plane's hosts: etcd, kubelet);
        # on loopback (a local control plane) only the API server's port, else nothing local could run.
        address = str(ip)
        return any(h == address and (port == p or not ip.is_loopback) for h, p in self._endpoints)


CONTROL_PLANE = ControlPlaneAddresses()


@dataclass(frozen=True)
class EgressRules:
    allow_loopback: bool = False
    # (host, port) pairs that are never reachable: the API server, etcd, the operator's own endpoints.
    forbidden_endpoints: frozenset[tuple[str, int]] = field(default_factory=frozenset)
    control_plane: ControlPlaneAddresses = field(default_factory=lambda: CONTROL_PLANE)

    @classmethod
    def from_env(cls) -> EgressRules:
        forbidden = set()
        for item in filter(None, os.environ.get("AIRUN_EGRESS_FORBIDDEN", "").split(",")):
            host, _, port = item.rpartition(":")
            forbidden.add((host.strip("[]"), int(port)))
        return cls(os.environ.get("AIRUN_EGRESS_ALLOW_LOOPBACK") == "1", frozenset(forbidden))

    def check_address(self, address: str, port: int) -> None:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a scope (fe80::1%eth0) changes nothing
        if isinstance(ip, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(ip)
            if embedded is not None:
                self._check_ip(ip, port, wrapper=True)
                ip = embedded
        self._check_ip(ip, port)

    def _check_ip(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, wrapper: bool = False) -> None:
        """WRAPPER: IP is the IPv6 form of an IPv4 address, checked next: only its own listings count."""
        if ip in METADATA_ADDRESSES:
            raise EgressRefused(f"{ip} is {METADATA_ADDRESSES[ip]}")
        if ip.is_link_local:
            raise EgressRefused(f"{ip} is link-local (cloud metadata services live there)")
        if self.control_plane.refuses(ip, port):
            raise EgressRefused(f"{ip}:{port} is the control plane (an API server address)")
        if ip.is_loopback:  # before is_reserved: ::1 lies in a reserved IPv6 block
            if not self.allow_loopback:
                raise EgressRefused(f"{ip} is loopback")
            if any(port == p for h, p in self.forbidden_endpoints if ipaddress.ip_address(h).is_loopback):
                raise EgressRefused(f"{ip}:{port} is the control plane")
            return
        if wrapper:
            return
        if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
            raise EgressRefused(f"{ip} is not a destination")
        if (str(ip), port) in self.forbidden_endpoints:
            raise EgressRefused(f"{ip}:{port} is the control plane")

    async def check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise EgressRefused(f"{url}: only http and https are allowed")
        if not parts.hostname:
            raise EgressRefused(f"{url}: no host")
        if parts.hostname.rstrip(".").lower() in METADATA_NAMES:
            raise EgressRefused(f"{parts.hostname} is a cloud metadata service")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        await self.addresses(parts.hostname, port)

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses HOST resolves to, each checked: one refused address refuses the name."""
        if host.rstrip(".").lower() in METADATA_NAMES:
            raise EgressRefused(f"{host} is a cloud metadata service")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise EgressRefused(f"{host}: cannot be resolved ({error})") from error
        found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in found:
            self.check_address(address, port)
        return found


class _CheckedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses the rules allow, resolved and checked right here."""

    def __init__(self, rules: EgressRules) -> None:
        self.rules = rules
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        failure: Exception | None = None
        for address in await self.rules.addresses(host, port):
            try:  # TLS is started on the stream with the original host name (SNI, certificate check)
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        raise failure or httpcore.ConnectError(f"{host}: no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("unix sockets are not a destination")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def http_client(rules: EgressRules, **options: Any) -> httpx.AsyncClient:
    """An httpx client that connects only where RULES allow (see the module's docstring)."""
    transport = httpx.AsyncHTTPTransport()
    # httpx takes no network backend of its own: set it on its connection pool (checked, so that an
    # upgrade that moves it fails here instead of silently connecting unchecked).
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.AsyncConnectionPool) or not hasattr(pool, "_network_backend"):
        raise RuntimeError("httpx/httpcore changed: cannot enforce the egress rules on connections")
    pool._network_backend = _CheckedNetworkBackend(rules)
    return httpx.AsyncClient(transport=transport, trust_env=False, **options)
