"""The capability catalogue a front door offers: built-in and plugin specs, plus the cluster's
Capability objects (read with the caller's identity by the front door)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from controller.api.capability import CapabilitySpec
from controller.capabilities import custom, registry


def cluster_capabilities(items: Iterable[dict[str, Any]]) -> dict[str, CapabilitySpec]:
    """The specs of Capability objects; incoherent ones are skipped (the operator refuses them too)."""
    found: dict[str, CapabilitySpec] = {}
    for item in items:
        try:
            found[item["metadata"]["name"]] = custom.parse(item["metadata"]["name"], item.get("spec") or {})
        except custom.InvalidCapability:
            continue
    return found


def catalogue(cluster_items: Iterable[dict[str, Any]], *, include_test: bool) -> dict[str, CapabilitySpec]:
    builtin = registry.load(include_test=include_test, include_plugins=True).specs()
    # A Capability object cannot reuse a built-in id: the built-in wins.
    return {**cluster_capabilities(cluster_items), **builtin}
