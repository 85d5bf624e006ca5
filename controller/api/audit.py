"""The kinds of audit record (controller/audit/): one name each, shared by the operator that writes them
and the tools and tests that read them. A kind's family is the part before the dot (`airun audit show
--kind approval`)."""

from __future__ import annotations

from enum import StrEnum


class AuditKind(StrEnum):
    WORKFLOW_STARTED = "workflow.started"
    WORKFLOW_FINISHED = "workflow.finished"
    WORKFLOW_ROLLBACK_REQUESTED = "workflow.rollback_requested"
    WORKFLOW_DELETION_REQUESTED = "workflow.deletion_requested"
    STEP_DECISION = "step.decision"
    STEP_STARTED = "step.started"
    STEP_FINISHED = "step.finished"
    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_DECIDED = "approval.decided"
    APPROVAL_VOTE = "approval.vote"  # one person's decision on a quorum Approval that did not decide it yet
    COMPENSATION_DECISION = "compensation.decision"
    COMPENSATION_STARTED = "compensation.started"
    COMPENSATION_FINISHED = "compensation.finished"
    BREAKER_OPENED = "breaker.opened"  # a policy's circuit breaker opened for a principal
    BREAKER_RESET = "breaker.reset"  # an approver closed them (`airun policy reset`)
    # Agents' transactions (the record's workflow column holds the Transaction's name, payload.transaction too)
    TRANSACTION_OPENED = "transaction.opened"
    TRANSACTION_COMMITTED = "transaction.committed"
    TRANSACTION_ROLLBACK_STARTED = "transaction.rollback_started"
    TRANSACTION_CALL_UNDONE = "transaction.call_undone"
    TRANSACTION_FINISHED = "transaction.finished"
