"""Where the operator may send requests (net.http capabilities, notifications).

Refused by default: link-local addresses (169.254.0.0/16 and fe80::/10, which hold the cloud metadata
services), loopback, unspecified and multicast addresses, and the control plane's own endpoints. A DNS
name is resolved first and every address it resolves to is checked, so a name cannot smuggle a refused
address. Loopback can be allowed for local environments and tests (never the control plane's ports).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit


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
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise EgressRefused(f"{parts.hostname}: cannot be resolved ({error})") from error
        for info in infos:
            self.check_address(str(info[4][0]), port)
