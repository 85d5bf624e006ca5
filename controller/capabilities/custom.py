"""Custom capabilities from Capability objects: an HTTP endpoint per capability, no Python."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from controller.api.capability import CapabilitySpec
from controller.capabilities.base import Handler, Invocation
from controller.capabilities.handlers.http import call_endpoint
from controller.capabilities.registry import risk_problems


class InvalidCapability(ValueError):
    pass


def parse(name: str, spec: Mapping[str, Any]) -> CapabilitySpec:
    try:
        parsed = CapabilitySpec.model_validate({**dict(spec), "id": name})
    except ValidationError as error:
        raise InvalidCapability(f"capability {name}: {error}") from error
    problems = risk_problems(parsed)
    if problems:
        raise InvalidCapability(f"capability {name}: " + "; ".join(problems))
    return parsed


def problems_with(
    spec: CapabilitySpec, known: Mapping[str, CapabilitySpec], builtin: Mapping[str, object]
) -> list[str]:
    """What keeps SPEC from joining the registry of KNOWN capabilities (built-in ones included)."""
    problems = []
    if spec.id in builtin:
        problems.append(f"{spec.id} is a built-in capability; choose another name")
    if spec.compensation and spec.compensation.capability and spec.compensation.capability not in known:
        problems.append(f"compensation {spec.compensation.capability!r} is not a capability")
    if spec.http is None:
        problems.append("spec.http is required")
    return problems


def http_handler(spec: CapabilitySpec) -> Handler:
    endpoint = spec.http
    assert endpoint is not None

    async def handler(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
        response = await call_endpoint(
            endpoint.method, endpoint.url, inputs, inv, timeout_seconds=endpoint.timeout_seconds
        )
        json_body = response.get("json")
        return json_body if isinstance(json_body, dict) else {"status": response["status"], "result": json_body}

    return handler
