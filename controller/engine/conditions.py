"""Status conditions, derived from the phase (API conventions and kstatus, so kubectl wait, Flux,
Argo CD and kpt understand a Workflow)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from controller.api.workflow import TERMINAL_PHASES, Condition, Reason, StepPhase, WorkflowPhase, WorkflowStatus


def _desired(status: WorkflowStatus) -> list[tuple[str, bool | None, str, str]]:
    phase = status.phase or WorkflowPhase.PENDING
    terminal = phase in TERMINAL_PHASES
    message = status.message or ""
    succeeded: bool | None
    if phase is WorkflowPhase.SUCCEEDED:
        succeeded, success_reason = True, Reason.SUCCEEDED.value
    elif terminal:
        succeeded, success_reason = False, status.reason or phase.value
    else:
        succeeded, success_reason = None, "InProgress"
    waiting = phase is WorkflowPhase.AWAITING_APPROVAL
    approvals = ", ".join(s.approval for s in status.steps if s.approval and s.phase is StepPhase.AWAITING_APPROVAL)
    return [
        ("Completed", terminal, phase.value, message if terminal else ""),
        ("Succeeded", succeeded, success_reason, message),
        (
            "AwaitingApproval",
            waiting,
            "ApprovalRequested" if waiting else "NoApprovalPending",
            f"waiting for {approvals}" if waiting else "",
        ),
        ("Ready", phase is WorkflowPhase.SUCCEEDED, phase.value, message),
        ("Reconciling", not terminal, phase.value, ""),
        (
            "Stalled",
            phase is WorkflowPhase.COMPENSATION_FAILED,
            status.reason or phase.value,
            message if phase is WorkflowPhase.COMPENSATION_FAILED else "",
        ),
    ]


def conditions_for(
    status: WorkflowStatus, generation: int, now: datetime, iso: Callable[[datetime], str]
) -> list[Condition]:
    previous = {c.type: c for c in status.conditions}
    result = []
    for type_, value, reason, message in _desired(status):
        text = "Unknown" if value is None else ("True" if value else "False")
        before = previous.get(type_)
        changed = before is None or before.status != text
        result.append(
            Condition(
                type=type_,
                status=text,
                reason=reason,
                message=message,
                last_transition_time=iso(now) if changed or before is None else before.last_transition_time,
                observed_generation=generation,
            )
        )
    return result
