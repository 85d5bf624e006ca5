"""Workflow manifests and states as the front doors read them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from controller.api.workflow import Step, StepPhase, WorkflowPhase
from controller.engine.steps import kind_of


class NotAWorkflow(ValueError):
    pass


def reason_of(error: Any) -> str:
    """The API server's own message in an ApiException (of kubernetes or kubernetes_asyncio), such as
    `workflows.aifirst.dev is forbidden: User "alice" cannot create resource ...`."""
    try:
        return str(yaml.safe_load(error.body or "").get("message", error.reason))
    except (yaml.YAMLError, AttributeError):
        return f"{error.status} {error.reason}"


def workflow_from_text(text: str, source: str) -> dict[str, Any]:
    """The one Workflow in TEXT (YAML or JSON); other documents, such as a Policy beside it, are ignored."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    except yaml.YAMLError as error:
        raise NotAWorkflow(f"{source}: {error}") from error
    workflows = [d for d in documents if d.get("kind") == "Workflow"]
    if len(workflows) != 1:
        raise NotAWorkflow(f"{source} does not hold one Workflow (it holds {len(workflows)})")
    return workflows[0]


def step_label(spec_step: Mapping[str, Any]) -> str:
    """What the front doors show in a step's capability column: its kind says (controller.engine.steps)."""
    try:
        step = Step.model_validate(spec_step)
    except ValidationError:
        return str(spec_step.get("capability") or "")
    return kind_of(step).label(step)


def pending_approvals(obj: dict[str, Any]) -> dict[str, str]:
    """Step name -> name of the Approval it waits for."""
    steps = (obj.get("status") or {}).get("steps") or []
    return {
        s["name"]: s["approval"] for s in steps if s.get("phase") == StepPhase.AWAITING_APPROVAL and s.get("approval")
    }


def summary(obj: dict[str, Any]) -> dict[str, Any]:
    """A workflow's state in plain data: phase, reason, principal, and per step its phase, decision,
    policy, approval, outputs and error."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    keep = ("phase", "decision", "policy", "approval", "attempts", "outputs", "error", "compensation")
    steps = status.get("steps") or []
    return {
        "workflow": meta.get("name"),
        "namespace": meta.get("namespace"),
        "phase": WorkflowPhase(status.get("phase") or WorkflowPhase.PENDING),
        **{k: status[k] for k in ("reason", "message", "principal", "progress") if status.get(k)},
        "steps": [{"name": s["name"], **{k: s[k] for k in keep if s.get(k) is not None}} for s in steps],
    }
