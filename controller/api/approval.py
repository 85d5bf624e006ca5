"""The states of an Approval custom resource (crds/approval.yaml): what the operator and the front doors
compare, instead of string literals."""

from __future__ import annotations

from enum import StrEnum


class ApprovalPhase(StrEnum):
    """`status.phase` of an Approval. A person's `spec.decision` is one of DECISIONS."""

    PENDING = "Pending"
    APPROVED = "Approved"
    REJECTED = "Rejected"
    EXPIRED = "Expired"


DECISIONS = frozenset({ApprovalPhase.APPROVED, ApprovalPhase.REJECTED})


def approval_phase(value: str | None) -> ApprovalPhase:
    """The phase a stored Approval shows (an empty or unset phase is Pending)."""
    return ApprovalPhase(value) if value else ApprovalPhase.PENDING


class ApprovalNotice(StrEnum):
    """What happened to an Approval, as its Event and its notification (`airun.event`) tell it."""

    REQUESTED = "requested"
    DECIDED = "decided"
    EXPIRED = "expired"
