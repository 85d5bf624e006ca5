"""The MCP tools of `airun mcp`: one per capability (its input schema; annotations derived from its spec)
and three for workflows. Every call becomes a Workflow; nothing here runs a capability."""

from __future__ import annotations

from typing import Any

import mcp_types as types

from controller import API_GROUP
from controller.api.capability import CapabilitySpec, RiskLevel
from controller.capabilities.registry import DESTRUCTIVE
from controller.client.calls import MANAGED_BY, TOOL_ANNOTATION, one_step_workflow, tool_name, undone_by

SUBMIT_WORKFLOW = "submit_workflow"
WORKFLOW_STATUS = "workflow_status"
LIST_WORKFLOWS = "list_workflows"
UNDO = "undo"
BEGIN_TRANSACTION = "begin_transaction"
COMMIT_TRANSACTION = "commit_transaction"
ROLLBACK_TRANSACTION = "rollback_transaction"
TRANSACTION_STATUS = "transaction_status"
TRANSACTION_ARGUMENT = "transaction"  # reserved on every capability tool: the id begin_transaction returned
__all__ = ["MANAGED_BY", "TOOL_ANNOTATION", "one_step_workflow", "tool_name", "undone_by"]


def capability_id(name: str) -> str | None:
    return name.replace("-", ".") if "-" in name else None


def tool_annotations(spec: CapabilitySpec) -> types.ToolAnnotations:
    """The MCP hints, from the spec's governance fields:
    - readOnlyHint: no side effects;
    - destructiveHint: a destructive side effect (fs.delete, k8s.delete, data.delete), a side effect no
      capability undoes, or HIGH/CRITICAL risk;
    - idempotentHint: `idempotent`;
    - openWorldHint: reaches beyond the cluster and the workspace (the net.* family, network.* side
      effects, or an HTTP endpoint of a custom Capability)."""
    effects = set(spec.side_effects)
    read_only = not effects
    destructive = not read_only and (
        bool(effects & DESTRUCTIVE) or undone_by(spec) is None or spec.risk.level.rank >= RiskLevel.HIGH.rank
    )
    open_world = spec.http is not None or spec.id.startswith("net.") or any(e.startswith("network.") for e in effects)
    return types.ToolAnnotations(
        title=spec.id,
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=spec.idempotent,
        open_world_hint=open_world,
    )


def with_transaction(inputs: dict[str, Any]) -> dict[str, Any]:
    """The capability's input schema plus the reserved optional argument `transaction`."""
    schema: dict[str, Any] = dict(inputs) if inputs.get("type") == "object" else {"type": "object", **inputs}
    properties = dict(schema.get("properties") or {})
    properties[TRANSACTION_ARGUMENT] = {
        "type": "string",
        "description": "Optional: the id begin_transaction returned; the call joins that transaction (reserved, "
        "not an input of the capability).",
    }
    schema["properties"] = properties
    return schema


def split_arguments(arguments: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The capability's inputs, and the transaction the call joins (the reserved argument)."""
    inputs = {k: v for k, v in arguments.items() if k != TRANSACTION_ARGUMENT}
    transaction = arguments.get(TRANSACTION_ARGUMENT)
    return inputs, (str(transaction) if transaction else None)


def capability_tool(spec: CapabilitySpec) -> types.Tool:
    undo = undone_by(spec)
    if spec.compensation and spec.compensation.from_step:
        undo_text = "cannot be undone by itself here, so every call waits for a person's approval"
    else:
        undo_text = f"undone by {undo}" if undo else "nothing to undo"
    facts = (
        f"Risk {spec.risk.level.value} ({spec.risk.reason}); side effects: {', '.join(spec.side_effects) or 'none'}; "
        f"{'idempotent' if spec.idempotent else 'not idempotent'}; {undo_text}."
    )
    return types.Tool(
        name=tool_name(spec.id),
        title=spec.id,
        description=(
            f"{spec.description.strip()}\n\n{facts}\nRuns as a governed one-step Workflow under your Kubernetes "
            "identity (policy, approval, audit, compensation). When a person must approve it, the result names the "
            "pending Approval and the workflow instead of waiting. Pass `transaction` (from begin_transaction) to "
            "group it with other calls that commit or roll back together; `undo` undoes your last calls."
        ),
        input_schema=with_transaction(spec.inputs),
        annotations=tool_annotations(spec),
        meta={f"{API_GROUP}/capability": spec.id, f"{API_GROUP}/risk": spec.risk.level.value},
    )


_NAMESPACE = {"type": "string", "description": "Namespace (default: the server's)."}

WORKFLOW_TOOLS = [
    types.Tool(
        name=SUBMIT_WORKFLOW,
        title="Submit a workflow",
        description=(
            "Create a Workflow (aifirst.dev/v1alpha1) from its manifest, YAML or JSON, under your Kubernetes "
            "identity; the operator runs it with policy, approvals, audit and compensation. Returns its name at "
            "once, or after waitSeconds when it ends or waits for an approval sooner."
        ),
        input_schema={
            "type": "object",
            "required": ["workflow"],
            "properties": {
                "workflow": {"type": "string", "description": "The Workflow manifest (YAML or JSON text)."},
                "namespace": _NAMESPACE,
                "waitSeconds": {
                    "type": "number",
                    "minimum": 0,
                    "description": "Wait up to this long (bounded by the server) for the end or an approval.",
                },
            },
        },
        annotations=types.ToolAnnotations(
            title="Submit a workflow",
            read_only_hint=False,
            destructive_hint=True,
            idempotent_hint=False,
            open_world_hint=True,
        ),
    ),
    types.Tool(
        name=WORKFLOW_STATUS,
        title="Workflow status",
        description=(
            "The state of a Workflow: its phase and reason, the principal it runs as, and per step the phase, "
            "policy decision, pending Approval (with how to approve it), outputs and error."
        ),
        input_schema={
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "description": "The workflow's name."}, "namespace": _NAMESPACE},
        },
        annotations=types.ToolAnnotations(
            title="Workflow status",
            read_only_hint=True,
            destructive_hint=False,
            idempotent_hint=True,
            open_world_hint=False,
        ),
    ),
    types.Tool(
        name=LIST_WORKFLOWS,
        title="List workflows",
        description="The Workflows of a namespace, newest first: name, phase, reason, principal, creation time.",
        input_schema={"type": "object", "properties": {"namespace": _NAMESPACE}},
        annotations=types.ToolAnnotations(
            title="List workflows",
            read_only_hint=True,
            destructive_hint=False,
            idempotent_hint=True,
            open_world_hint=False,
        ),
    ),
]


_TX_ID = {"type": "string", "description": "The transaction id that begin_transaction returned."}


def _hints(title: str, *, read_only: bool, destructive: bool, idempotent: bool) -> types.ToolAnnotations:
    return types.ToolAnnotations(
        title=title,
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=False,
    )


TRANSACTION_TOOLS = [
    types.Tool(
        name=UNDO,
        title="Undo your last calls",
        description=(
            "Undo (compensate) your own last `count` finished calls or workflows, newest first, each through its "
            "governed compensation (the same as a failed workflow's). The result lists each undone call and how it "
            "was undone. Calls that only read have nothing to undo and are passed over."
        ),
        input_schema={
            "type": "object",
            "properties": {"count": {"type": "integer", "minimum": 1, "default": 1, "description": "How many calls."}},
        },
        annotations=_hints("Undo your last calls", read_only=False, destructive=True, idempotent=False),
    ),
    types.Tool(
        name=BEGIN_TRANSACTION,
        title="Begin a transaction",
        description=(
            "Begin a transaction: pass the id it returns as `transaction` to the tool calls that belong to it; "
            "commit_transaction closes it, rollback_transaction undoes all of its calls, newest first. Left open "
            "longer than ttlSeconds (you crashed or forgot), it is rolled back for you. Only you may add to it, "
            "commit it or roll it back."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 256, "description": "What you are about to do."},
                "ttlSeconds": {"type": "integer", "minimum": 1, "maximum": 604800, "default": 900},
            },
        },
        annotations=_hints("Begin a transaction", read_only=False, destructive=False, idempotent=False),
    ),
    types.Tool(
        name=COMMIT_TRANSACTION,
        title="Commit a transaction",
        description="Close the transaction: its calls stay, no call may join it any more, its TTL no longer applies.",
        input_schema={"type": "object", "required": ["transaction"], "properties": {"transaction": _TX_ID}},
        annotations=_hints("Commit a transaction", read_only=False, destructive=False, idempotent=True),
    ),
    types.Tool(
        name=ROLLBACK_TRANSACTION,
        title="Roll a transaction back",
        description=(
            "Undo every call of the transaction, in reverse order of completion, each through its governed "
            "compensation; calls still running are stopped first. Returns what was undone, in that order."
        ),
        input_schema={"type": "object", "required": ["transaction"], "properties": {"transaction": _TX_ID}},
        annotations=_hints("Roll a transaction back", read_only=False, destructive=True, idempotent=True),
    ),
    types.Tool(
        name=TRANSACTION_STATUS,
        title="Transaction status",
        description="A transaction's phase, expiry, and its calls in call order with what became of each.",
        input_schema={"type": "object", "required": ["transaction"], "properties": {"transaction": _TX_ID}},
        annotations=_hints("Transaction status", read_only=True, destructive=False, idempotent=True),
    ),
]


def all_tools(specs: dict[str, CapabilitySpec]) -> list[types.Tool]:
    """What `airun mcp` offers for SPECS: a tool per capability (not the internal ones), then the others."""
    offered = sorted((s for s in specs.values() if not s.internal), key=lambda s: s.id)
    return [*map(capability_tool, offered), *WORKFLOW_TOOLS, *TRANSACTION_TOOLS]


def export_mcp(tools: list[types.Tool]) -> dict[str, Any]:
    """The tools as an MCP server lists them (the result of tools/list), for clients configured from files."""
    return {"tools": [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]}


def export_openai(tools: list[types.Tool]) -> list[dict[str, Any]]:
    """The tools as OpenAI function calling declares them (`tools` of the Chat Completions and Responses APIs).
    A call an application receives is made through `airun execute` or `airun mcp`, under the caller's identity."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": "\n".join(filter(None, [t.title if t.title != t.name else None, t.description])),
                "parameters": t.input_schema,
            },
        }
        for t in tools
    ]
