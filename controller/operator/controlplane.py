"""Learns the API server's real addresses for the egress rules: the `kubernetes` Service's VIP is refused
through the environment, but the API server also answers on its node addresses, which only its
EndpointSlice (or, on old clusters, its Endpoints) in `default` names. Read at start-up and every
REFRESH_SECONDS; a failed read keeps the addresses known so far."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from controller.capabilities.egress import CONTROL_PLANE, ControlPlaneAddresses
from controller.operator.kube import Connection

REFRESH_SECONDS = 60.0
log = logging.getLogger("airun.controlplane")


def endpoints_of_slice(body: Mapping[str, Any]) -> set[tuple[str, int]]:
    ports = [int(p["port"]) for p in body.get("ports") or [] if p.get("port")]
    return {(a, port) for e in body.get("endpoints") or [] for a in e.get("addresses") or [] for port in ports}


def endpoints_of_endpoints(body: Mapping[str, Any]) -> set[tuple[str, int]]:
    found = set()
    for subset in body.get("subsets") or []:
        ports = [int(p["port"]) for p in subset.get("ports") or [] if p.get("port")]
        found |= {(a["ip"], port) for a in subset.get("addresses") or [] if a.get("ip") for port in ports}
    return found


async def read(connection: Connection) -> set[tuple[str, int]]:
    """The API server's (address, port) pairs: from its EndpointSlice, and its Endpoints (old clusters)."""
    found: set[tuple[str, int]] = set()
    readers = (
        (client.DiscoveryV1Api(connection.api).read_namespaced_endpoint_slice, endpoints_of_slice),
        (client.CoreV1Api(connection.api).read_namespaced_endpoints, endpoints_of_endpoints),
    )
    for read_object, parse in readers:
        try:
            body = connection.api.sanitize_for_serialization(await read_object("kubernetes", "default"))
        except ApiException as error:
            if error.status in (403, 404):
                continue
            raise
        found |= parse(body if isinstance(body, Mapping) else {})
    return found


async def learn(connection: Connection, addresses: ControlPlaneAddresses = CONTROL_PLANE) -> None:
    """Runs until cancelled: keeps ADDRESSES up to date."""
    warned = False
    while True:
        try:
            found = await read(connection)
            if found:
                if found != set(addresses.endpoints):
                    log.info("the API server's addresses: %s", ", ".join(f"{h}:{p}" for h, p in sorted(found)))
                addresses.replace(found)
            elif not warned:
                log.warning(
                    "no API server addresses found (EndpointSlice or Endpoints default/kubernetes): "
                    "only the listed control plane endpoints are refused as destinations"
                )
                warned = True
        except (ApiException, OSError, TimeoutError, ValueError) as error:
            log.warning("reading the API server's addresses failed: %s", error)
        await asyncio.sleep(REFRESH_SECONDS)
