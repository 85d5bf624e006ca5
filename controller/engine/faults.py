"""The last resort: a workflow whose pure computation raised something unexpected (a bug, not a
decision) still gets a terminal phase and a message saying so, instead of no phase at all."""

from __future__ import annotations

from controller.api.workflow import (
    TERMINAL_PHASES,
    Reason,
    StepPhase,
    StepStatus,
    WorkflowPhase,
    WorkflowStatus,
)
from controller.engine.conditions import conditions_for
from controller.engine.state import World, iso

MAX_MESSAGE = 1000


def failed_by_fault(world: World, error: BaseException) -> WorkflowStatus:
    """WORLD's status, Failed with reason InternalError. Steps that had not started are Skipped; steps
    in flight keep their phase (their attempts are cancelled by the caller; nothing is compensated,
    since planning the compensation is what just failed). A terminal status is returned unchanged."""
    status = world.status.fork()
    if status.phase in TERMINAL_PHASES:
        return status
    if not status.steps:
        status.steps = [StepStatus(name=step.name) for step in world.spec.steps]
    for s in status.steps:
        if s.phase in (StepPhase.PENDING, StepPhase.AWAITING_APPROVAL):
            s.phase = StepPhase.SKIPPED
    status.phase = WorkflowPhase.FAILED
    status.reason = Reason.INTERNAL_ERROR.value
    message = f"the operator could not plan this workflow: {type(error).__name__}: {error}"
    status.message = message[:MAX_MESSAGE]
    status.finished_at = iso(world.now)
    status.principal = status.principal or world.principal.user
    status.conditions = conditions_for(status, world.ref.generation, world.now, iso)
    return status
