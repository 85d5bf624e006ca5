"""Secret references in step inputs: `{secretKeyRef: {name, key}}` becomes the value of that key of a
Secret in the workflow's namespace, read as the workflow's principal (impersonation), so a workflow can
only use the secrets its author may read."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from controller.capabilities.base import CapabilityError, Invocation
from controller.capabilities.handlers.k8s import KubeGateway


def _is_ref(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"secretKeyRef"} and isinstance(value["secretKeyRef"], Mapping)


def has_refs(value: Any) -> bool:
    if _is_ref(value):
        return True
    if isinstance(value, Mapping):
        return any(has_refs(v) for v in value.values())
    if isinstance(value, list):
        return any(has_refs(v) for v in value)
    return False


async def resolve(inputs: Mapping[str, Any], inv: Invocation) -> dict[str, Any]:
    """INPUTS with every secret reference replaced by its value (a copy; INPUTS is untouched)."""
    if not has_refs(inputs):
        return dict(inputs)
    cache: dict[str, dict[str, str]] = {}

    async def value_of(ref: Mapping[str, Any]) -> str:
        name, key = str(ref.get("name", "")), str(ref.get("key", ""))
        if name not in cache:
            if not isinstance(inv.kube, KubeGateway):
                raise CapabilityError("secret references need the operator's API connection", retryable=False)
            response = await inv.kube.call(inv, "GET", f"/api/v1/namespaces/{inv.namespace}/secrets/{name}")
            if response.status_code != 200:
                message = response.json().get("message", response.text) if response.content else response.text
                raise CapabilityError(f"secret {name}: {message}", retryable=response.status_code >= 500)
            cache[name] = response.json().get("data") or {}
        if key not in cache[name]:
            raise CapabilityError(f"secret {name} has no key {key!r}", retryable=False)
        return base64.b64decode(cache[name][key]).decode()

    async def walk(value: Any) -> Any:
        if _is_ref(value):
            return await value_of(value["secretKeyRef"])
        if isinstance(value, Mapping):
            return {k: await walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [await walk(v) for v in value]
        return value

    resolved: dict[str, Any] = await walk(dict(inputs))
    return resolved
