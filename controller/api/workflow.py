"""Pydantic models of the Workflow custom resource (crds/workflow.yaml; docs/user-guide.md). The CRD schema
is the authority on what the API server accepts; these models give the operator and the engine typed access,
and their enums are the one spelling of each phase, decision and reason (no string literals elsewhere)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class _Untracked(frozenset[str]):
    """Stands in for pydantic's per-instance record of the fields given explicitly (`model_fields_set`) in the
    status models, where nothing reads it: a set of five or more names takes 728 bytes, two thirds of a
    Condition, and the operator holds a status of every running workflow (1,000 at once: 6 MiB of such
    sets for the conditions alone). One shared, empty instance that ignores pydantic's additions, and that
    copies and deep copies (model_copy) leave shared."""

    def add(self, name: str) -> None:
        pass

    def update(self, *names: Any) -> None:
        pass

    def __copy__(self) -> _Untracked:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Untracked:
        return self


UNTRACKED = _Untracked()


class _StatusModel(_Model):
    """A part of `.status`: written by the operator only, never dumped with exclude_unset, so which fields
    were given is not kept (model_fields_set is empty)."""

    def model_post_init(self, context: Any, /) -> None:
        object.__setattr__(self, "__pydantic_fields_set__", UNTRACKED)


class StepType(StrEnum):
    ACTION = "Action"
    APPROVAL = "Approval"


class Retry(_Model):
    limit: int = 2
    backoff_seconds: float = Field(1.0, alias="backoffSeconds")
    factor: float = 2.0

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry RETRY_NUMBER (1 for the first retry)."""
        return float(self.backoff_seconds * self.factor ** (retry_number - 1))


class CompensationOverride(_Model):
    capability: str
    inputs: dict[str, Any] = Field(default_factory=dict)


class Notify(_Model):
    webhook_url: str | None = Field(None, alias="webhookUrl")


class Step(_Model):
    name: str
    type: StepType = StepType.ACTION
    capability: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list, alias="dependsOn")
    retry: Retry = Field(default_factory=Retry)
    timeout_seconds: int | None = Field(None, alias="timeoutSeconds")
    compensation: CompensationOverride | None = None
    irreversible: bool = False
    # The remote API honours `Idempotency-Key`: after a crash the step runs again with the same key instead
    # of ending in doubt. Only for capabilities that send the key (checked at apply).
    idempotent: bool = False
    message: str | None = None
    approval_timeout_seconds: int | None = Field(None, alias="approvalTimeoutSeconds")
    notify: Notify | None = None


class WorkflowSpec(_Model):
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: int | None = Field(None, alias="timeoutSeconds")
    rollback: bool = False
    steps: list[Step]


class WorkflowPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    AWAITING_APPROVAL = "AwaitingApproval"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    COMPENSATING = "Compensating"
    COMPENSATED = "Compensated"
    COMPENSATION_FAILED = "CompensationFailed"


TERMINAL_PHASES = frozenset(
    {
        WorkflowPhase.SUCCEEDED,
        WorkflowPhase.FAILED,
        WorkflowPhase.COMPENSATED,
        WorkflowPhase.COMPENSATION_FAILED,
    }
)

# Finished phases after which the operator stops watching a workflow (FINISHED_LABEL). CompensationFailed
# is not among them: such a workflow waits for a person, and airun_workflows counts it for the alert.
UNWATCHED_PHASES = TERMINAL_PHASES - {WorkflowPhase.COMPENSATION_FAILED}


class StepPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    AWAITING_APPROVAL = "AwaitingApproval"
    COMPENSATING = "Compensating"
    COMPENSATED = "Compensated"
    COMPENSATION_FAILED = "CompensationFailed"


class Decision(StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    REQUIRE_APPROVAL = "REQUIRE_APPROVAL"


class Reason(StrEnum):
    SUCCEEDED = "Succeeded"
    STEP_FAILED = "StepFailed"
    POLICY_DENIED = "PolicyDenied"
    APPROVAL_REJECTED = "ApprovalRejected"
    APPROVAL_EXPIRED = "ApprovalExpired"
    TIMEOUT = "Timeout"
    IN_DOUBT = "InDoubt"
    ROLLBACK_REQUESTED = "RollbackRequested"
    DELETED = "Deleted"
    INVALID_SPEC = "InvalidSpec"
    UNATTESTED = "Unattested"  # no principal the operator's admission webhook attested
    INTERNAL_ERROR = "InternalError"  # the operator's own computation failed (a bug): see the message
    RATE_LIMITED = "RateLimited"  # a policy's `limits:` allowed no more steps of this principal for now


class EventType(StrEnum):
    """The type of a Kubernetes Event the operator records."""

    NORMAL = "Normal"
    WARNING = "Warning"


class CompensationStatus(_StatusModel):
    phase: StepPhase | None = None
    capability: str | None = None
    inputs: dict[str, Any] | None = None
    attempts: int = 0
    error: str | None = None
    decision: Decision | None = Field(None, description="The policy decision for the compensation, made when it runs.")
    policy: str | None = Field(None, description="Which policy and rule decided the compensation.")
    approved: bool | None = Field(None, description="The step's Approval covered this compensation too.")
    next_attempt_at: str | None = Field(None, alias="nextAttemptAt")
    started_at: str | None = Field(None, alias="startedAt")
    finished_at: str | None = Field(None, alias="finishedAt")


class PolicyCondition(_StatusModel):
    """The `when:` condition of the rule that decided a step, and what it saw (redacted)."""

    rule: str  # e.g. "ClusterPolicy baseline rule 2"
    when: str
    saw: dict[str, Any] | None = Field(None, description="The values the condition read, by path, redacted.")
    error: str | None = Field(None, description="Why it failed to evaluate (the decision is then DENY).")


class StepStatus(_StatusModel):
    name: str
    phase: StepPhase = StepPhase.PENDING
    attempts: int = 0
    decision: Decision | None = None
    policy: str | None = None
    audit: list[str] | None = Field(None, description="What Audit-mode policies would have decided.")
    condition: PolicyCondition | None = None
    approval: str | None = None
    idempotency_key: str | None = Field(None, alias="idempotencyKey")
    started_at: str | None = Field(None, alias="startedAt")
    finished_at: str | None = Field(None, alias="finishedAt")
    next_attempt_at: str | None = Field(None, alias="nextAttemptAt")
    completion: int | None = Field(None, description="Order in which the step completed (1, 2, ...).")
    in_doubt: bool | None = Field(None, alias="inDoubt")
    outputs: dict[str, Any] | None = None
    error: str | None = None
    compensation: CompensationStatus | None = None


class Condition(_StatusModel):
    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = Field(None, alias="lastTransitionTime")
    observed_generation: int | None = Field(None, alias="observedGeneration")


class WorkflowStatus(_StatusModel):
    phase: WorkflowPhase | None = None
    reason: str | None = None
    message: str | None = None
    principal: str | None = None
    observed_generation: int | None = Field(None, alias="observedGeneration")
    started_at: str | None = Field(None, alias="startedAt")
    finished_at: str | None = Field(None, alias="finishedAt")
    progress: str | None = None
    steps: list[StepStatus] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)

    def step(self, name: str) -> StepStatus:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def fork(self) -> WorkflowStatus:
        """A copy for the engine to change, leaving this one as it was: every model in it is copied (the
        engine assigns their fields: a step's phase, its compensation's), the values of plain dicts and
        lists (outputs, inputs, audit) are shared, as the engine only ever replaces them, never changes
        them in place (tests/unit/simulation.py checks that every call leaves its input unchanged). A
        deep copy cost 197 µs for 10 steps, this 36 µs, several times per step and growing with the steps."""
        steps = [
            s.model_copy(
                update={
                    "compensation": s.compensation.model_copy() if s.compensation else None,
                    "condition": s.condition.model_copy() if s.condition else None,
                }
            )
            for s in self.steps
        ]
        return self.model_copy(update={"steps": steps, "conditions": [c.model_copy() for c in self.conditions]})

    def dump(self) -> dict[str, Any]:
        """The status as the API stores it (camelCase, no empty fields)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=False)
