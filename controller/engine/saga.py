"""The workflow state machine (pure): given everything known about a workflow, what happens next.

`plan(world)` returns the next status and the commands to carry out once that status is durable: start
these actions, start these compensations, request these approvals, cancel these attempts, and when to
look again. `record_action` and `record_compensation` fold an outcome into the status. The operator
writes the status (one PATCH) before it starts what the plan says, so a side effect never starts without
its checkpoint, and it folds outcomes into the next plan's status, so a result and the next steps'
start share one PATCH.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.api.capability import CapabilitySpec, RiskLevel
from controller.api.policy import Approvers, PolicyObject, Principal
from controller.api.workflow import (
    TERMINAL_PHASES,
    CompensationStatus,
    Decision,
    Reason,
    Retry,
    Step,
    StepPhase,
    StepStatus,
    StepType,
    WorkflowPhase,
    WorkflowSpec,
    WorkflowStatus,
)
from controller.engine import dag
from controller.engine.conditions import conditions_for
from controller.engine.schema import validate_inputs
from controller.engine.templating import TemplateError, render
from controller.policy.evaluate import evaluate

MAX_OUTPUT_BYTES = 4096
MAX_OUTPUT_VALUE_BYTES = 1024
MAX_ERROR_CHARS = 1024
APPROVAL_TTL = timedelta(hours=24)
COMPENSATION_RETRY = Retry(limit=3, backoff_seconds=0.5, factor=2)
_REDACT = re.compile(r"pass(word)?|secret|token|api[-_]?key|credential|private[-_]?key", re.IGNORECASE)


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
    phase: str  # Pending | Approved | Rejected | Expired
    inputs_hash: str | None = None
    expires_at: datetime | None = None
    decided_by: str | None = None
    requested_at: datetime | None = None


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


@dataclass(frozen=True)
class ExpireApproval:
    step: str
    name: str


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
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
    """Stable across retries and restarts of the same step, distinct across workflows and steps."""
    digest = hashlib.sha256(f"{ref.uid}/{step}/{purpose}".encode()).hexdigest()[:32]
    return f"{ref.namespace}.{ref.name}.{step}.{digest}"[:200]


def inputs_hash(inputs: Mapping[str, Any]) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def redact(value: Any) -> Any:
    """Values under secret-sounding keys are hidden. Secret references ({secretKeyRef: ...}) stay as
    references: the engine never sees secret values."""
    if isinstance(value, Mapping):
        return {
            k: "***" if (_REDACT.search(str(k)) and isinstance(v, str | int | float)) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def approval_name(ref: WorkflowRef, step: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", f"{ref.name}-{step}".lower()).strip("-")
    if len(base) > 240:
        base = base[:229] + "-" + hashlib.sha256(base.encode()).hexdigest()[:10]
    return base


def bound_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Status stays small: large values are replaced by a note of their size."""
    bounded: dict[str, Any] = {}
    for key, value in outputs.items():
        size = len(json.dumps(value, default=str))
        bounded[key] = value if size <= MAX_OUTPUT_VALUE_BYTES else f"<{size} bytes, not kept in status>"
    if len(json.dumps(bounded, default=str)) > MAX_OUTPUT_BYTES:
        return {"truncated": True, "bytes": len(json.dumps(outputs, default=str))}
    return bounded


def _truncate(text: str) -> str:
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


def spec_errors(spec: WorkflowSpec, capabilities: Mapping[str, CapabilitySpec]) -> list[str]:
    """What makes the workflow impossible to run, found before any step starts."""
    errors = dag.validate(spec.steps)
    for step in spec.steps:
        if step.type is StepType.APPROVAL:
            continue
        cap = capabilities.get(step.capability or "")
        if cap is None:
            errors.append(f"step {step.name!r}: unknown capability {step.capability!r}")
            continue
        if step.compensation and step.compensation.capability not in capabilities:
            errors.append(f"step {step.name!r}: unknown compensation capability {step.compensation.capability!r}")
        if cap.compensation and cap.compensation.from_step and not step.compensation and not step.irreversible:
            errors.append(
                f"step {step.name!r}: {cap.id} is undone by the inverse the step declares: add "
                "compensation: {capability, inputs} (or irreversible: true, which needs approval)"
            )
        elif cap.side_effects and not (cap.compensation or step.compensation) and not step.irreversible:
            errors.append(
                f"step {step.name!r}: {cap.id} has side effects ({', '.join(cap.side_effects)}) and no "
                "compensation; set irreversible: true to acknowledge it (the step then needs approval)"
            )
    return errors


def _next_completion(status: WorkflowStatus) -> int:
    return 1 + max((s.completion or 0 for s in status.steps), default=0)


def _fail(status: WorkflowStatus, reason: Reason, message: str) -> None:
    """The first failure decides the reason; later ones only add their step's own error."""
    if status.reason is None:
        status.reason = reason.value
        status.message = _truncate(message)


def _compensation_for(
    step: Step,
    cap: CapabilitySpec | None,
    key: str,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    context: Mapping[str, Any],
) -> CompensationStatus | None:
    """Renders the undo of a completed (or in-doubt) step while everything it needs is at hand, so
    compensation after a restart needs nothing that lived only in memory."""
    chosen = step.compensation or (cap.compensation if cap else None)
    if chosen is None or not chosen.capability:
        return None
    ctx = {**context, "inputs": dict(inputs), "outputs": dict(outputs), "idempotencyKey": key}
    try:
        rendered = render(chosen.inputs, ctx, where="compensation.inputs")
    except TemplateError as error:
        return CompensationStatus(phase=StepPhase.PENDING, capability=chosen.capability, error=str(error))
    return CompensationStatus(phase=StepPhase.PENDING, capability=chosen.capability, inputs=rendered)


# -- the state machine -------------------------------------------------------------------------------


def plan(world: World) -> Plan:
    status = world.status.model_copy(deep=True)
    result = Plan(status)
    _initialise(world, status)

    if status.phase in TERMINAL_PHASES:
        if world.spec.rollback and status.phase is WorkflowPhase.SUCCEEDED and not world.ref.deleting:
            status.phase = WorkflowPhase.COMPENSATING
            status.reason, status.message = Reason.ROLLBACK_REQUESTED.value, "spec.rollback was set"
            status.finished_at = None
            result.events.append(Event("Normal", "RollbackRequested", "compensating the completed steps"))
        else:
            result.finished = True
            _finish(world, status)
            return result

    if status.phase is WorkflowPhase.PENDING:
        errors = spec_errors(world.spec, world.capabilities)
        reason = Reason.INVALID_SPEC
        if not world.principal.user:
            reason = Reason.UNATTESTED
            errors.insert(
                0,
                "no principal attested by the operator's admission webhook was recorded for this workflow "
                "(it was created while the webhooks were not registered, or its annotations were forged); "
                "create it again",
            )
        if errors:
            status.phase = WorkflowPhase.FAILED
            status.reason, status.message = reason.value, _truncate("; ".join(errors))
            status.finished_at = iso(world.now)
            for s in status.steps:
                s.phase = StepPhase.SKIPPED
            result.events.append(Event("Warning", reason.value, status.message))
            result.finished = True
            _finish(world, status)
            return result
        status.phase = WorkflowPhase.RUNNING
        status.started_at = iso(world.now)
        result.events.append(Event("Normal", "Started", f"{len(world.spec.steps)} steps"))

    if status.phase in (WorkflowPhase.RUNNING, WorkflowPhase.AWAITING_APPROVAL):
        _run(world, status, result)
    if status.phase is WorkflowPhase.COMPENSATING:
        _compensate(world, status, result)
    _finish(world, status)
    return result


def _initialise(world: World, status: WorkflowStatus) -> None:
    if status.phase is None:
        status.phase = WorkflowPhase.PENDING
    known = {s.name: s for s in status.steps}
    status.steps = [known.get(step.name) or StepStatus(name=step.name) for step in world.spec.steps]
    status.observed_generation = world.ref.generation
    if not status.principal:
        status.principal = world.principal.user


def _finish(world: World, status: WorkflowStatus) -> None:
    done = sum(1 for s in status.steps if s.phase is StepPhase.SUCCEEDED)
    status.progress = f"{done}/{len(status.steps)}"
    status.conditions = conditions_for(status, world.ref.generation, world.now, iso)


def _run(world: World, status: WorkflowStatus, result: Plan) -> None:
    specs = {s.name: s for s in world.spec.steps}
    now = world.now

    # A step Running but not in flight was interrupted by a restart of the operator.
    for s in status.steps:
        if s.phase is not StepPhase.RUNNING or s.name in world.in_flight:
            continue
        step = specs[s.name]
        cap = world.capabilities.get(step.capability or "")
        key = s.idempotency_key or idempotency_key(world.ref, s.name)
        context = template_context(world.ref, world.spec, status)
        if cap is not None and cap.idempotent:
            try:
                inputs = render(step.inputs, context)
            except TemplateError as error:
                s.phase, s.error = StepPhase.FAILED, _truncate(str(error))
                _fail(status, Reason.STEP_FAILED, f"step {s.name} failed: {error}")
                continue
            result.actions.append(
                RunAction(s.name, cap.id, inputs, key, s.attempts, step.timeout_seconds, recovered=True)
            )
            result.events.append(
                Event(
                    "Normal",
                    "Recovered",
                    f"step {s.name} was running when the operator stopped; "
                    f"{cap.id} is idempotent, so it runs again with the same idempotency key",
                )
            )
            continue
        s.phase, s.in_doubt = StepPhase.FAILED, True
        s.finished_at, s.completion = iso(now), _next_completion(status)
        s.error = (
            "the operator stopped while this step ran and its capability is not idempotent: "
            "whether it took effect is unknown"
        )
        try:
            inputs = render(step.inputs, context)
        except TemplateError:
            inputs = {}
        s.compensation = _compensation_for(step, cap, key, inputs, {}, context)
        _fail(status, Reason.IN_DOUBT, f"step {s.name} is in doubt after an operator restart")
        result.events.append(Event("Warning", "InDoubt", f"step {s.name}: {s.error}"))

    # Why the workflow must stop starting steps, if it must.
    if status.reason is None:
        deadline = None
        if world.spec.timeout_seconds and status.started_at:
            started = parse_time(status.started_at)
            assert started is not None
            deadline = started + timedelta(seconds=world.spec.timeout_seconds)
        if world.ref.deleting:
            _fail(status, Reason.DELETED, "the workflow is being deleted")
        elif world.spec.rollback:
            _fail(status, Reason.ROLLBACK_REQUESTED, "spec.rollback was set")
        elif deadline is not None and now >= deadline:
            _fail(status, Reason.TIMEOUT, f"the workflow did not finish within {world.spec.timeout_seconds} s")
            result.cancel.extend(sorted(world.in_flight))
        elif deadline is not None:
            result.wake(deadline)

    if status.reason is None:
        _start_ready_steps(world, status, result, specs)

    running = [s for s in status.steps if s.phase is StepPhase.RUNNING]
    if status.reason is not None:
        if running or world.in_flight:
            return  # let the attempts in flight end; their results are recorded, then we compensate
        for s in status.steps:
            if s.phase in (StepPhase.PENDING, StepPhase.AWAITING_APPROVAL):
                s.phase = StepPhase.SKIPPED
        if any(s.compensation is not None for s in status.steps):
            status.phase = WorkflowPhase.COMPENSATING
            result.events.append(Event("Warning", "Compensating", status.message or ""))
        else:
            status.phase = WorkflowPhase.FAILED
            status.finished_at = iso(now)
            result.finished = not world.in_flight
            result.events.append(Event("Warning", "Failed", status.message or ""))
        return

    if all(s.phase is StepPhase.SUCCEEDED for s in status.steps):
        status.phase = WorkflowPhase.SUCCEEDED
        status.reason, status.message = None, None
        status.finished_at = iso(now)
        result.finished = True
        result.events.append(Event("Normal", "Succeeded", f"{len(status.steps)} steps succeeded"))
        return
    waiting = any(s.phase is StepPhase.AWAITING_APPROVAL for s in status.steps)
    status.phase = WorkflowPhase.AWAITING_APPROVAL if waiting and not running else WorkflowPhase.RUNNING


def _start_ready_steps(world: World, status: WorkflowStatus, result: Plan, specs: Mapping[str, Step]) -> None:
    now = world.now
    by_name = {s.name: s for s in status.steps}
    # Topological order: a step that an approval lets pass in this very pass frees its dependents too.
    for name in dag.topological_order(world.spec.steps):
        s = by_name[name]
        if status.reason is not None:
            return
        if s.phase not in (StepPhase.PENDING, StepPhase.AWAITING_APPROVAL):
            continue
        step = specs[s.name]
        phases = {x.name: x.phase for x in status.steps}
        if not all(phases.get(d) is StepPhase.SUCCEEDED for d in step.depends_on):
            continue
        next_attempt = parse_time(s.next_attempt_at)
        if next_attempt is not None and next_attempt > now:
            result.wake(next_attempt)
            continue
        context = template_context(world.ref, world.spec, status)

        if step.type is StepType.APPROVAL:
            _gate(world, status, result, s, step, None, None, None)
            continue

        cap = world.capabilities[step.capability or ""]
        try:
            inputs = render(step.inputs, context)
        except TemplateError as error:
            s.phase, s.error, s.finished_at = StepPhase.FAILED, _truncate(str(error)), iso(now)
            _fail(status, Reason.STEP_FAILED, f"step {s.name} failed: {error}")
            continue
        problems = validate_inputs(cap.inputs, inputs)
        if problems:
            s.phase, s.finished_at = StepPhase.FAILED, iso(now)
            s.error = _truncate(f"inputs do not match {cap.id}: " + "; ".join(problems))
            _fail(status, Reason.STEP_FAILED, f"step {s.name} failed: {s.error}")
            continue

        verdict = evaluate(
            world.policies,
            principal=world.principal,
            namespace=world.ref.namespace,
            capability=cap.id,
            risk=cap.risk.level,
            irreversible=step.irreversible,
        )
        if s.decision is None:
            s.decision = verdict.decision
            s.policy = _truncate(verdict.reason)
            s.audit = [v.explanation for v in verdict.audit_only] or None
        if verdict.decision is Decision.DENY:
            s.decision, s.policy = Decision.DENY, _truncate(verdict.reason)
            s.phase, s.finished_at = StepPhase.FAILED, iso(now)
            s.error = f"denied by policy: {verdict.reason}"
            _fail(status, Reason.POLICY_DENIED, f"step {s.name} was denied: {verdict.reason}")
            result.events.append(Event("Warning", "PolicyDenied", f"step {s.name}: {verdict.reason}"))
            continue
        if verdict.decision is Decision.REQUIRE_APPROVAL:
            deciding = verdict.deciding
            approvers = deciding.approvers if deciding else None
            notify = deciding.notify_url if deciding else None
            if not _gate(world, status, result, s, step, cap, inputs, approvers, notify):
                continue

        s.phase, s.attempts = StepPhase.RUNNING, s.attempts + 1
        s.started_at, s.next_attempt_at, s.finished_at = iso(now), None, None
        s.idempotency_key = s.idempotency_key or idempotency_key(world.ref, s.name)
        result.actions.append(RunAction(s.name, cap.id, inputs, s.idempotency_key, s.attempts, step.timeout_seconds))


def _gate(
    world: World,
    status: WorkflowStatus,
    result: Plan,
    s: StepStatus,
    step: Step,
    cap: CapabilitySpec | None,
    inputs: dict[str, Any] | None,
    approvers: Approvers | None,
    notify: str | None = None,
) -> bool:
    """A step that needs a person. True when it is approved and may run now (an explicit Approval step
    succeeds at once instead)."""
    now = world.now
    digest = inputs_hash(inputs) if inputs is not None else None
    name = s.approval or approval_name(world.ref, s.name)
    state = world.approvals.get(s.name)
    if state is None or state.name != name:
        if s.approval is None:
            s.approval, s.phase = name, StepPhase.AWAITING_APPROVAL
            result.events.append(Event("Normal", "ApprovalRequested", f"step {s.name} waits for approval {name}"))
        ttl = timedelta(seconds=step.approval_timeout_seconds) if step.approval_timeout_seconds else APPROVAL_TTL
        expires = now + ttl
        message = step.message or (
            f"Run {cap.id} ({cap.risk.level.value} risk: {cap.risk.reason}) for workflow {world.ref.name}?"
            if cap
            else f"Approve step {s.name} of workflow {world.ref.name}?"
        )
        notify = (step.notify.webhook_url if step.notify else None) or notify
        result.approvals.append(
            RequestApproval(
                s.name,
                name,
                cap.id if cap else None,
                cap.risk.level if cap else None,
                redact(inputs or {}),
                digest,
                message,
                approvers,
                expires,
                notify,
            )
        )
        return False
    if state.phase == "Pending":
        if state.expires_at is not None and now >= state.expires_at:
            result.expire.append(ExpireApproval(s.name, name))
            state = ApprovalState(state.name, "Expired")
        else:
            s.phase = StepPhase.AWAITING_APPROVAL
            if state.expires_at is not None:
                result.wake(state.expires_at)
            return False
    if state.phase == "Approved":
        if digest is not None and state.inputs_hash != digest:
            s.phase, s.finished_at = StepPhase.FAILED, iso(now)
            s.error = "the inputs changed after they were approved"
            _fail(status, Reason.STEP_FAILED, f"step {s.name}: {s.error}")
            return False
        if step.type is StepType.APPROVAL:
            s.phase, s.finished_at = StepPhase.SUCCEEDED, iso(now)
            s.outputs = {"approvedBy": state.decided_by} if state.decided_by else {}
            s.completion = _next_completion(status)
            return False
        return True
    reason = Reason.APPROVAL_REJECTED if state.phase == "Rejected" else Reason.APPROVAL_EXPIRED
    s.phase, s.finished_at = StepPhase.FAILED, iso(now)
    s.error = f"approval {name} was {state.phase.lower()}" + (f" by {state.decided_by}" if state.decided_by else "")
    _fail(status, reason, f"step {s.name}: {s.error}")
    result.events.append(Event("Warning", reason.value, f"step {s.name}: {s.error}"))
    return False


def _compensate(world: World, status: WorkflowStatus, result: Plan) -> None:
    """One compensation at a time, in reverse completion order, each retried with backoff."""
    now = world.now
    order = sorted(
        (s for s in status.steps if s.compensation is not None and s.completion is not None),
        key=lambda s: s.completion or 0,
        reverse=True,
    )
    for s in order:
        c = s.compensation
        assert c is not None
        if c.phase in (StepPhase.COMPENSATED, StepPhase.COMPENSATION_FAILED):
            continue
        if s.phase is StepPhase.FAILED and not s.in_doubt:
            continue
        key = idempotency_key(world.ref, s.name, "compensation")
        if c.phase is StepPhase.RUNNING:
            if s.name not in world.compensating:  # interrupted by a restart: compensations are re-runnable
                result.compensations.append(
                    RunCompensation(s.name, c.capability or "", c.inputs or {}, key, c.attempts)
                )
            return
        if c.inputs is None:  # its inputs could not be rendered when the step completed
            c.phase, s.phase, c.finished_at = (
                StepPhase.COMPENSATION_FAILED,
                StepPhase.COMPENSATION_FAILED,
                iso(now),
            )
            result.events.append(Event("Warning", "CompensationFailed", f"step {s.name}: {c.error}"))
            continue
        next_attempt = parse_time(c.next_attempt_at)
        if next_attempt is not None and next_attempt > now:
            result.wake(next_attempt)
            return
        c.phase, c.attempts, c.next_attempt_at = StepPhase.RUNNING, c.attempts + 1, None
        c.started_at = c.started_at or iso(now)
        s.phase = StepPhase.COMPENSATING
        result.compensations.append(RunCompensation(s.name, c.capability or "", c.inputs, key, c.attempts))
        return
    failed = [s.name for s in order if s.compensation and s.compensation.phase is StepPhase.COMPENSATION_FAILED]
    status.phase = WorkflowPhase.COMPENSATION_FAILED if failed else WorkflowPhase.COMPENSATED
    status.finished_at = iso(now)
    result.finished = True
    if failed:
        result.events.append(
            Event(
                "Warning",
                "CompensationFailed",
                f"could not compensate {', '.join(failed)}: a person must act",
            )
        )
    else:
        result.events.append(Event("Normal", "Compensated", f"{len(order)} steps compensated in reverse order"))


# -- outcomes ----------------------------------------------------------------------------------------


def record_action(world: World, outcome: ActionResult) -> WorkflowStatus:
    """Folds the outcome of one attempt into the status (of WORLD; its `now` is the time of the outcome)."""
    status = world.status.model_copy(deep=True)
    s = status.step(outcome.step)
    if s.phase is not StepPhase.RUNNING:
        return status  # stale: the step moved on meanwhile
    step = next(x for x in world.spec.steps if x.name == outcome.step)
    cap = world.capabilities.get(step.capability or "")
    now = iso(world.now)
    s.finished_at = now
    key = s.idempotency_key or idempotency_key(world.ref, s.name)
    if outcome.ok:
        outputs = dict(outcome.outputs or {})
        s.phase, s.error, s.outputs = StepPhase.SUCCEEDED, None, bound_outputs(outputs)
        s.completion = _next_completion(status)
        context = template_context(world.ref, world.spec, status)
        s.compensation = _compensation_for(step, cap, key, outcome.inputs, outputs, context)
        return status
    s.error = _truncate(outcome.error or "failed")
    if outcome.retryable and not outcome.cancelled and s.attempts <= step.retry.limit:
        s.phase = StepPhase.PENDING
        s.next_attempt_at = iso(world.now + timedelta(seconds=step.retry.delay(s.attempts)))
        return status
    s.phase = StepPhase.FAILED
    if outcome.timed_out or outcome.cancelled:
        # A cut-off attempt may have taken effect: compensate it (compensations tolerate "never happened").
        s.in_doubt = True
        s.completion = _next_completion(status)
        context = template_context(world.ref, world.spec, status)
        s.compensation = _compensation_for(step, cap, key, outcome.inputs, {}, context)
    attempts = f" after {s.attempts} attempts" if s.attempts > 1 else ""
    _fail(status, Reason.STEP_FAILED, f"step {s.name} failed{attempts}: {s.error}")
    return status


def record_compensation(world: World, outcome: CompensationResult) -> WorkflowStatus:
    status = world.status.model_copy(deep=True)
    s = status.step(outcome.step)
    c = s.compensation
    if c is None or c.phase is not StepPhase.RUNNING:
        return status
    now = iso(world.now)
    if outcome.ok:
        c.phase, c.error, c.finished_at = StepPhase.COMPENSATED, None, now
        s.phase = StepPhase.COMPENSATED
        return status
    c.error = _truncate(outcome.error or "failed")
    if c.attempts <= COMPENSATION_RETRY.limit:
        c.phase = StepPhase.PENDING
        c.next_attempt_at = iso(world.now + timedelta(seconds=COMPENSATION_RETRY.delay(c.attempts)))
    else:
        c.phase, c.finished_at = StepPhase.COMPENSATION_FAILED, now
        s.phase = StepPhase.COMPENSATION_FAILED
    return status
