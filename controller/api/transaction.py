"""Pydantic models of the Transaction custom resource (DESIGN section 6): the boundary an agent that acts one
call at a time draws around its calls. The calls are one-step Workflows labelled `aifirst.dev/transaction`;
rolling the transaction back compensates each of them, newest completion first, through the same governed
compensation as a failed saga (spec.rollback of each workflow)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from controller.api.metadata import JOINED_ANNOTATION as JOINED_ANNOTATION
from controller.api.metadata import TRANSACTION_LABEL as TRANSACTION_LABEL

MAX_CALLS = 100  # calls one transaction holds (status stays small); the admission webhook refuses more
MAX_TTL_SECONDS = 7 * 24 * 3600
DEFAULT_TTL_SECONDS = 900


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class TransactionPhase(StrEnum):
    OPEN = "Open"  # calls may join it
    COMMITTED = "Committed"  # closed; its calls stay (the transaction may still be rolled back)
    ROLLING_BACK = "RollingBack"  # its calls are being compensated, newest completion first
    ROLLED_BACK = "RolledBack"
    ROLLBACK_FAILED = "RollbackFailed"  # a call's compensation failed: a person must look
    FAILED = "Failed"  # it could never be opened (no attested principal)


FINISHED_PHASES = frozenset({TransactionPhase.ROLLED_BACK, TransactionPhase.ROLLBACK_FAILED, TransactionPhase.FAILED})


class TransactionReason(StrEnum):
    OPENED = "Opened"
    COMMITTED = "Committed"
    ROLLBACK_REQUESTED = "RollbackRequested"  # its principal set spec.rollback
    EXPIRED = "Expired"  # left open past its TTL: the operator rolled it back
    COMPENSATION_FAILED = "CompensationFailed"
    UNATTESTED = "Unattested"


class CallPhase(StrEnum):
    """What became of one call, as the transaction sees it."""

    RUNNING = "Running"  # not finished yet
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"  # ended failed (and compensated itself): nothing left to undo
    UNDOING = "Undoing"  # its rollback was requested
    UNDONE = "Undone"
    UNDO_FAILED = "UndoFailed"


class TransactionSpec(_Model):
    description: str = ""
    ttl_seconds: int = Field(DEFAULT_TTL_SECONDS, alias="ttlSeconds")
    commit: bool = False
    rollback: bool = False


class Call(_Model):
    workflow: str
    capability: str | None = None
    phase: CallPhase = CallPhase.RUNNING
    finished_at: str | None = Field(None, alias="finishedAt")
    undo: str | None = None  # the capability that undid it


class TransactionStatus(_Model):
    phase: TransactionPhase | None = None
    reason: TransactionReason | None = None
    message: str | None = None
    principal: str | None = None
    expires_at: str | None = Field(None, alias="expiresAt")
    finished_at: str | None = Field(None, alias="finishedAt")
    rollback_requested_by: str | None = Field(None, alias="rollbackRequestedBy")
    call_count: int | None = Field(None, alias="callCount")
    calls: list[Call] = Field(default_factory=list)  # in call order
    undone: list[str] = Field(default_factory=list)  # workflows, in the order they were compensated

    def dump(self) -> dict[str, object]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
