"""When the operator must write a workflow's status before it carries out a plan (pure).

Always, except when the plan only starts steps whose kind needs no checkpoint (no side effects) and
nothing else changed but such steps: re-running those after a crash is harmless, so their transitions
ride along with the next checkpoint, or are written within a bounded delay (OVERDUE). A side effect
never starts, and a side effect's result never waits, without a write (docs/architecture.md, "Costs").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.engine.state import Plan

# Fields of the status that follow from its steps and its phase: they change with every transition.
DERIVED = ("steps", "conditions", "progress")


def must_checkpoint(plan: Plan, written: Mapping[str, Any], deferrable: frozenset[str], *, overdue: bool) -> bool:
    """Whether PLAN's status must be durable before its commands are carried out. WRITTEN is the status
    the API server holds (as dumped); DEFERRABLE names the steps whose transitions may wait; OVERDUE:
    a deferred transition has waited long enough."""
    if overdue:
        return True
    if not plan.actions or plan.finished or plan.compensations or plan.approvals or plan.expire or plan.cancel:
        return True
    if any(a.step not in deferrable for a in plan.actions):
        return True
    after = plan.status.dump()
    if {k: v for k, v in after.items() if k not in DERIVED} != {k: v for k, v in written.items() if k not in DERIVED}:
        return True  # the workflow itself changed (phase, reason, ...)
    written_steps = {s["name"]: s for s in written.get("steps", [])}
    return any(step != written_steps.get(step["name"]) and step["name"] not in deferrable for step in after["steps"])
