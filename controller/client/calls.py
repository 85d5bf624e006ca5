"""One governed call: the one-step Workflow that `airun execute` and each MCP tool call create, as the caller.
Nothing here runs a capability: the operator runs the workflow under its policies."""

from __future__ import annotations

import json
from typing import Any

from controller import API_GROUP, API_VERSION
from controller.api.capability import CapabilitySpec
from controller.api.transaction import TRANSACTION_LABEL

MANAGED_BY = {"app.kubernetes.io/managed-by": "airun-mcp"}
TOOL_ANNOTATION = f"{API_GROUP}/mcp-tool"


def tool_name(capability_id: str) -> str:
    """`io.fs.write_file` -> `io-fs-write_file`. Capability ids never hold `-`, so the mapping can be
    reversed; and names without dots suit every MCP client (some accept only [A-Za-z0-9_-])."""
    return capability_id.replace(".", "-")


def undone_by(spec: CapabilitySpec) -> str | None:
    """The capability that undoes SPEC (None when it cannot be undone automatically)."""
    return spec.compensation.capability if spec.compensation else None


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(_has_template(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_template(v) for v in value)
    return False


def one_step_workflow(
    spec: CapabilitySpec,
    arguments: dict[str, Any],
    *,
    transaction: str | None = None,
    managed_by: dict[str, str] | None = None,
    prefix: str = "mcp",
) -> dict[str, Any]:
    """The Workflow of one call. The operator renders step inputs as templates; a caller's value that
    looks like one ("{{ ... }}") goes through `params` instead, so it arrives exactly as sent. With
    TRANSACTION the call joins that Transaction (label aifirst.dev/transaction; the admission webhook
    refuses it unless the caller began that transaction and it is open)."""
    inputs: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for key, value in arguments.items():
        if _has_template(value):
            params[key] = value
            # A single expression keeps the value's type; json.dumps quotes the key as a Jinja string literal.
            inputs[key] = "{{ params[" + json.dumps(key) + "] }}"
        else:
            inputs[key] = value
    step: dict[str, Any] = {"name": spec.id.rsplit(".", 1)[-1], "capability": spec.id, "inputs": inputs}
    if spec.side_effects and undone_by(spec) is None:
        # The step's own compensation cannot be given through the tool's schema: a person approves instead.
        step["irreversible"] = True
    origin = "MCP tool call" if prefix == "mcp" else "airun execute"
    spec_body: dict[str, Any] = {"description": f"{origin}: {spec.id}", "steps": [step]}
    if params:
        spec_body["params"] = params
    labels = dict(MANAGED_BY if managed_by is None else managed_by)
    if transaction:
        labels[TRANSACTION_LABEL] = transaction
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "Workflow",
        "metadata": {
            "generateName": f"{prefix}-{spec.id.replace('.', '-').replace('_', '-')}-",
            "labels": labels,
            "annotations": {TOOL_ANNOTATION: tool_name(spec.id)},
        },
        "spec": spec_body,
    }


def approve_command(namespace: str, approval: str) -> str:
    patch = json.dumps({"spec": {"decision": "Approved"}})
    return f"kubectl patch approval {approval} -n {namespace} --type merge -p '{patch}'"
