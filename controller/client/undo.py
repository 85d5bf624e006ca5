"""`undo` (the `airun undo` command and the MCP tool): the caller's own last finished calls or workflows,
newest completion first, each compensated through the saga's governed compensation (spec.rollback).

Whose calls they are is what the operator recorded (status.principal, written only by the operator from the
admission webhook's attestation), compared with who the API server says the caller is (SelfSubjectReview):
never a name the caller gives."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from controller.api.workflow import WorkflowPhase
from controller.engine.transaction import newest_completion_first, undoable, view_of

UNDO_FINISHED = frozenset(
    {WorkflowPhase.COMPENSATED.value, WorkflowPhase.COMPENSATION_FAILED.value, WorkflowPhase.FAILED.value}
)
ROLLBACK_PATCH = {"spec": {"rollback": True}}


def candidates(items: Iterable[dict[str, Any]], user: str, count: int) -> list[dict[str, Any]]:
    """The COUNT workflows of USER to undo, newest completion first: succeeded, not rolled back yet, with
    something to compensate (a call that only read has nothing to undo and is passed over)."""
    objects = {str(o["metadata"]["name"]): o for o in items}
    views = [view_of(o, str((o.get("status") or {}).get("principal") or "")) for o in objects.values()]
    mine = [v for v in views if v.principal == user and undoable(v)]
    return [objects[v.name] for v in newest_completion_first(mine)[: max(0, count)]]


def entry(obj: dict[str, Any]) -> dict[str, Any]:
    """What became of one undone call: the workflow, what it did, how it was undone, and its phase."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    steps = []
    for step in status.get("steps") or []:
        compensation = step.get("compensation") or {}
        if compensation.get("capability"):
            done: dict[str, Any] = {"step": step["name"], "undo": compensation["capability"]}
            done["phase"] = compensation.get("phase") or "Pending"
            if compensation.get("error"):
                done["error"] = compensation["error"]
            steps.append(done)
    capabilities = [s.get("capability") for s in (obj.get("spec") or {}).get("steps") or [] if s.get("capability")]
    result: dict[str, Any] = {
        "workflow": meta.get("name"),
        "namespace": meta.get("namespace"),
        "capability": ", ".join(capabilities),
        "phase": status.get("phase") or "Pending",
        "undone": steps,
    }
    if status.get("reason"):
        result["reason"] = status["reason"]
    return result


def line(done: dict[str, Any]) -> str:
    how = "; ".join(f"{s['step']} by {s['undo']} ({s['phase']})" for s in done["undone"]) or "nothing to compensate"
    return f"{done['namespace']}/{done['workflow']} ({done['capability']}): {done['phase']}: {how}"
