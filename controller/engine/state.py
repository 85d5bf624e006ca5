"""What the workflow state machine reads and returns, and the small pure helpers its parts share
(controller.engine.saga plans, controller.engine.steps says what each type of step does).

`World` is everything a plan reads; `Plan` holds the next status and the commands to carry out once that
status is durable. `Planning` is one pass of `plan()`: the world it reads and the status and plan it
writes, handed to every part that decides something. `fail_step` is the one way a step fails.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.api.approval import ApprovalPhase
from controller.api.capability import CapabilitySpec, CompensationSpec, RiskLevel
from controller.api.policy import Approvers, PolicyObject, Principal
from controller.api.workflow import (
    CompensationOverride,
    CompensationStatus,
    EventType,
    Reason,
    Retry,
    Step,
    StepPhase,
    StepStatus,
    WorkflowSpec,
    WorkflowStatus,
)
from controller.engine.templating import TemplateError, render
from controller.policy.evaluate import PolicyQuery

MAX_OUTPUT_BYTES = 4096
MAX_OUTPUT_VALUE_BYTES = 1024
MAX_ERROR_CHARS = 1024
APPROVAL_TTL = timedelta(hours=24)
COMPENSATION_RETRY = Retry(limit=3, backoff_seconds=0.5, factor=2)
MAX_OBJECT_NAME = 253  # a Kubernetes object name (DNS subdomain)
KEY_PREFIX_CHARS = 32  # the readable part of an idempotency key
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# -- inputs of the state machine ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowRef:
    name: str
    namespace: str
    uid: str
    generation: int = 1
    deleting: bool = False


@dataclass(frozen=True)
class ApprovalState:
    name: str
    phase: ApprovalPhase
    inputs_hash: str | None = None
    expires_at: datetime | None = None
    decided_by: str | None = None
    requested_at: datetime | None = None
    compensation: str | None = None  # the compensation capability that this approval covers too


@dataclass(frozen=True)
class World:
    """Everything plan() reads. IN_FLIGHT and COMPENSATING name the steps whose action or compensation
    runs in this process now: a step the status calls Running that is not in flight was interrupted by
    a restart of the operator."""

    ref: WorkflowRef
    spec: WorkflowSpec
    status: WorkflowStatus
    capabilities: Mapping[str, CapabilitySpec]
    policies: Sequence[PolicyObject]
    principal: Principal
    now: datetime
    approvals: Mapping[str, ApprovalState] = field(default_factory=dict)
    in_flight: frozenset[str] = frozenset()
    compensating: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)  # the workflow's (`workflow.labels` in conditions)


# -- outputs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunAction:
    step: str
    capability: str
    inputs: dict[str, Any]
    idempotency_key: str
    attempt: int
    timeout: float | None
    recovered: bool = False


@dataclass(frozen=True)
class RunCompensation:
    step: str
    capability: str
    inputs: dict[str, Any]
    idempotency_key: str
    attempt: int


@dataclass(frozen=True)
class CoveredCompensation:
    """A compensation that needs approval: the forward step's Approval asks for it too, and covers it."""

    capability: str
    risk: RiskLevel


@dataclass(frozen=True)
class RequestApproval:
    step: str
    name: str
    capability: str | None
    risk: RiskLevel | None
    inputs: dict[str, Any]  # redacted
    inputs_hash: str | None
    message: str
    approvers: Approvers | None
    expires_at: datetime
    notify_url: str | None = None
    compensation: CoveredCompensation | None = None


@dataclass(frozen=True)
class ExpireApproval:
    step: str
    name: str


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass
class Plan:
    status: WorkflowStatus
    actions: list[RunAction] = field(default_factory=list)
    compensations: list[RunCompensation] = field(default_factory=list)
    approvals: list[RequestApproval] = field(default_factory=list)
    expire: list[ExpireApproval] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    wake_at: datetime | None = None
    finished: bool = False

    def wake(self, when: datetime) -> None:
        self.wake_at = when if self.wake_at is None else min(self.wake_at, when)


@dataclass(frozen=True)
class ActionResult:
    step: str
    ok: bool
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = True
    timed_out: bool = False
    cancelled: bool = False


@dataclass(frozen=True)
class CompensationResult:
    step: str
    ok: bool
    error: str | None = None


# -- helpers -----------------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def idempotency_key(ref: WorkflowRef, step: str, purpose: str = "action") -> str:
    """Stable across retries and restarts of the same step, distinct across workflows, steps and
    purposes. The whole SHA-256 of (uid, step, purpose) makes it unique (none of the three holds a
    `/`); the short prefix only tells a person reading a remote API's log where the key came from, so
    the key's length is bounded (at most KEY_PREFIX_CHARS + 65) whatever the names."""
    digest = hashlib.sha256(f"{ref.uid}/{step}/{purpose}".encode()).hexdigest()
    prefix = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{ref.name}.{step}")[:KEY_PREFIX_CHARS]
    return f"{prefix}.{digest}"


def inputs_hash(inputs: Mapping[str, Any]) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def approval_name(ref: WorkflowRef, step: str) -> str:
    """The Approval of one step: `{workflow}.{step}`. Step names hold no dots, so the last dot tells
    workflow and step apart again and two (workflow, step) pairs never share a name. A step name that is
    not a lowercase DNS label (`Prod_DB`) is sanitised and gets a digest of its exact spelling (so
    `Prod_DB` and `prod-db` differ); a name too long for an object keeps a digest of the whole pair."""
    if _DNS_LABEL.match(step):
        label = step
    else:
        label = (re.sub(r"[^a-z0-9-]+", "-", step.lower()).strip("-")[:54] or "step") + "-" + _digest(step, 8)
    name = f"{ref.name}.{label}"
    if len(name) > MAX_OBJECT_NAME:
        suffix = _digest(f"{ref.name}/{step}", 16)
        name = name[: MAX_OBJECT_NAME - len(suffix) - 1].rstrip(".-") + "-" + suffix
    return name


def _digest(text: str, chars: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:chars]


def bound_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Status stays small: large values are replaced by a note of their size."""
    bounded: dict[str, Any] = {}
    for key, value in outputs.items():
        size = len(json.dumps(value, default=str))
        bounded[key] = value if size <= MAX_OUTPUT_VALUE_BYTES else f"<{size} bytes, not kept in status>"
    if len(json.dumps(bounded, default=str)) > MAX_OUTPUT_BYTES:
        return {"truncated": True, "bytes": len(json.dumps(outputs, default=str))}
    return bounded


def truncate(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def template_context(ref: WorkflowRef, spec: WorkflowSpec, status: WorkflowStatus) -> dict[str, Any]:
    return {
        "params": spec.params,
        "steps": {
            s.name: {"outputs": s.outputs or {}, "phase": s.phase.value}
            for s in status.steps
            if s.phase is StepPhase.SUCCEEDED or s.outputs is not None
        },
        "workflow": {"name": ref.name, "namespace": ref.namespace, "uid": ref.uid},
    }


def next_completion(status: WorkflowStatus) -> int:
    return 1 + max((s.completion or 0 for s in status.steps), default=0)


@dataclass
class Planning:
    """One pass of plan(): the WORLD it reads, the STATUS it changes and the PLAN it returns."""

    world: World
    status: WorkflowStatus
    plan: Plan

    @property
    def now(self) -> datetime:
        return self.world.now

    def context(self) -> dict[str, Any]:
        """The context of templates rendered now: the outputs of the steps done so far."""
        return template_context(self.world.ref, self.world.spec, self.status)

    def event(self, type: EventType, reason: str, message: str) -> None:
        self.plan.events.append(Event(type, reason, message))


def stop(status: WorkflowStatus, reason: Reason, message: str) -> None:
    """The workflow starts no more steps, for REASON. The first failure decides the reason; later ones
    only add their step's own error."""
    if status.reason is None:
        status.reason = reason.value
        status.message = truncate(message)


def fail_step(
    status: WorkflowStatus,
    s: StepStatus,
    now: datetime,
    error: str,
    *,
    reason: Reason = Reason.STEP_FAILED,
    how: str = "failed",
    detail: str | None = None,
    events: list[Event] | None = None,
) -> None:
    """The one way a step fails: it ends Failed now with ERROR, and the workflow stops for REASON with the
    message "step NAME HOW: DETAIL" (DETAIL is ERROR unless given; no HOW: "step NAME: DETAIL"). With
    EVENTS, a Warning event says so too."""
    detail = error if detail is None else detail
    s.phase, s.finished_at, s.error = StepPhase.FAILED, iso(now), truncate(error)
    stop(status, reason, f"step {s.name} {how}: {detail}" if how else f"step {s.name}: {detail}")
    if events is not None:
        events.append(Event(EventType.WARNING, reason.value, f"step {s.name}: {detail}"))


# -- how a step is undone -----------------------------------------------------------------------------


def compensation_of(
    step: Step, capabilities: Mapping[str, CapabilitySpec]
) -> CompensationOverride | CompensationSpec | None:
    """What undoes STEP: its own compensation, else its capability's (None: nothing, or a step without
    a capability)."""
    cap = capabilities.get(step.capability) if step.capability else None
    chosen = step.compensation or (cap.compensation if cap else None)
    return chosen if chosen is not None and chosen.capability else None


def undone_by(step: Step, capabilities: Mapping[str, CapabilitySpec]) -> str | None:
    """The capability that would undo STEP (its own override first)."""
    chosen = compensation_of(step, capabilities)
    return chosen.capability if chosen is not None else None


def approval_covers_compensation(world: World, s: StepStatus, step: Step) -> bool:
    """Whether the step ran under an Approval that asked for its compensation too."""
    capability = undone_by(step, world.capabilities)
    state = world.approvals.get(s.name)
    return bool(
        capability
        and s.approval
        and state is not None
        and state.name == s.approval
        and state.phase is ApprovalPhase.APPROVED
        and state.compensation == capability
    )


def render_compensation(
    world: World,
    status: WorkflowStatus,
    s: StepStatus,
    step: Step,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
) -> CompensationStatus | None:
    """Renders the undo of a completed (or in-doubt) step while everything it needs is at hand, so
    compensation after a restart needs nothing that lived only in memory. When the step's approval
    covered its compensation too, that is kept in status (so a restart keeps it)."""
    chosen = compensation_of(step, world.capabilities)
    if chosen is None or not chosen.capability:
        return None
    covered = True if approval_covers_compensation(world, s, step) else None
    key = s.idempotency_key or idempotency_key(world.ref, s.name)
    context = template_context(world.ref, world.spec, status)
    ctx = {**context, "inputs": dict(inputs), "outputs": dict(outputs), "idempotencyKey": key}
    try:
        rendered = render(chosen.inputs, ctx, where="compensation.inputs")
    except TemplateError as error:
        return CompensationStatus(
            phase=StepPhase.PENDING, capability=chosen.capability, error=str(error), approved=covered
        )
    return CompensationStatus(phase=StepPhase.PENDING, capability=chosen.capability, inputs=rendered, approved=covered)


def query(
    world: World,
    step: str,
    capability: CapabilitySpec,
    *,
    irreversible: bool = False,
    inputs: Mapping[str, Any] | None = None,
) -> PolicyQuery:
    """What the policies are asked about running CAPABILITY for STEP of this workflow."""
    return PolicyQuery(
        world.principal,
        world.ref.namespace,
        capability.id,
        capability.risk.level,
        irreversible=irreversible,
        workflow=world.ref.name,
        step=step,
        inputs=inputs,
        labels=world.labels,
        params=world.spec.params,
        now=world.now,
    )
