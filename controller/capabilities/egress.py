"""Where the operator may send requests (net.http capabilities, notifications).

Refused by default: link-local addresses (169.254.0.0/16 and fe80::/10, which hold the cloud metadata
services), loopback, unspecified and multicast addresses, and the control plane's own endpoints. A DNS
name is resolved first and every address it resolves to is checked, so a name cannot smuggle a refused
address. Loopback can be allowed for local environments and tests (never the control plane's ports).

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


@dataclass(frozen=True)
class EgressRules:
    allow_loopback: bool = False
    # (host, port) pairs that are never reachable: the API server, etcd, the operator's own endpoints.
    forbidden_endpoints: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    @classmethod
    def from_env(cls) -> EgressRules:
        forbidden = set()
        for item in filter(None, os.environ.get("AIRUN_EGRESS_FORBIDDEN", "").split(",")):
            host, _, port = item.rpartition(":")
            forbidden.add((host.strip("[]"), int(port)))
        return cls(os.environ.get("AIRUN_EGRESS_ALLOW_LOOPBACK") == "1", frozenset(forbidden))

    def check_address(self, address: str, port: int) -> None:
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if ip.is_link_local:
            raise EgressRefused(f"{ip} is link-local (cloud metadata services live there)")
        if ip.is_loopback:  # before is_reserved: ::1 lies in a reserved IPv6 block
            if not self.allow_loopback:
                raise EgressRefused(f"{ip} is loopback")
            if any(port == p for h, p in self.forbidden_endpoints if ipaddress.ip_address(h).is_loopback):
                raise EgressRefused(f"{ip}:{port} is the control plane")
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
        port = parts.port or (443 if parts.scheme == "https" else 80)
        await self.addresses(parts.hostname, port)

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses HOST resolves to, each checked: one refused address refuses the name."""
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
