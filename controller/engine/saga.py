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
    PolicyCondition,
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
from controller.engine.redaction import redact as redact  # saga.redact: what approvers and the audit see
from controller.engine.schema import validate_inputs
from controller.engine.templating import TemplateError, render
from controller.policy.conditions import bounded
from controller.policy.evaluate import SEVERITY, PolicyQuery, PolicyResult, evaluate

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
    phase: str  # Pending | Approved | Rejected | Expired
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
    errors += _approval_name_clashes(spec)
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


def _approval_name_clashes(spec: WorkflowSpec) -> list[str]:
    """Two steps of one workflow can share an Approval name only when one is named like the other's
    sanitised form (`Prod_DB` and `prod-db-<its digest>`): refused, so one decision never counts twice."""
    ref = WorkflowRef("w", "", "")
    seen: dict[str, str] = {}
    errors = []
    for step in spec.steps:
        name = approval_name(ref, step.name)
        if name in seen:
            errors.append(f"steps {seen[name]!r} and {step.name!r} would share one Approval: rename one")
        seen.setdefault(name, step.name)
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
    approved: bool = False,
) -> CompensationStatus | None:
    """Renders the undo of a completed (or in-doubt) step while everything it needs is at hand, so
    compensation after a restart needs nothing that lived only in memory. APPROVED: the step's approval
    covered its compensation too (kept in status, so a restart keeps it)."""
    chosen = step.compensation or (cap.compensation if cap else None)
    if chosen is None or not chosen.capability:
        return None
    covered = True if approved else None
    ctx = {**context, "inputs": dict(inputs), "outputs": dict(outputs), "idempotencyKey": key}
    try:
        rendered = render(chosen.inputs, ctx, where="compensation.inputs")
    except TemplateError as error:
        return CompensationStatus(
            phase=StepPhase.PENDING, capability=chosen.capability, error=str(error), approved=covered
        )
    return CompensationStatus(phase=StepPhase.PENDING, capability=chosen.capability, inputs=rendered, approved=covered)


def _compensation_capability(step: Step, cap: CapabilitySpec | None) -> str | None:
    """The capability that would undo STEP (its own override first)."""
    chosen = step.compensation or (cap.compensation if cap else None)
    return chosen.capability if chosen is not None and chosen.capability else None


def _approval_covers_compensation(world: World, s: StepStatus, step: Step, cap: CapabilitySpec | None) -> bool:
    """Whether the step ran under an Approval that asked for its compensation too."""
    capability = _compensation_capability(step, cap)
    state = world.approvals.get(s.name)
    return bool(
        capability
        and s.approval
        and state is not None
        and state.name == s.approval
        and state.phase == "Approved"
        and state.compensation == capability
    )


def _query(world: World, step: str, capability: CapabilitySpec, **extra: Any) -> PolicyQuery:
    return PolicyQuery(
        world.principal,
        world.ref.namespace,
        capability.id,
        capability.risk.level,
        workflow=world.ref.name,
        step=step,
        labels=world.labels,
        params=world.spec.params,
        now=world.now,
        **extra,
    )


def _condition_of(result: PolicyResult) -> PolicyCondition | None:
    """The condition of the rule that decided, with the values it saw, redacted: for status and audit."""
    verdict = result.deciding
    if verdict is None or verdict.when is None:
        return None
    rule = f"{verdict.policy} rule {verdict.rule}"
    saw = {key: bounded(value) for key, value in redact(dict(verdict.seen)).items()} if verdict.seen else None
    return PolicyCondition(
        rule=rule, when=verdict.when, saw=saw, error=_truncate(verdict.error) if verdict.error else None
    )


def _compensation_refusal(world: World, s: StepStatus, c: CompensationStatus) -> str | None:
    """Why this compensation must not run now (None: it may). A compensation is a capability run like
    any other: a policy must allow it for the workflow's principal (decided now, policies may have
    changed since the step ran; a DENY wins), its inputs must match the capability's schema, and
    when it needs approval, the step's own Approval must have covered it."""
    cap = world.capabilities.get(c.capability or "")
    if cap is None:
        return f"compensation {c.capability} is not a known capability"
    problems = validate_inputs(cap.inputs, c.inputs or {})
    if problems:
        return f"compensation inputs do not match {cap.id}: " + "; ".join(problems)
    verdict = evaluate(world.policies, _query(world, s.name, cap, inputs=c.inputs))
    c.decision, c.policy = verdict.decision, _truncate(verdict.reason)
    if verdict.decision is Decision.DENY:
        return f"compensation {cap.id} denied by policy: {verdict.reason}"
    if verdict.decision is Decision.REQUIRE_APPROVAL and not c.approved:
        return (
            f"compensation {cap.id} requires approval ({verdict.reason}) and the step's approval did not "
            "cover it: a person must undo the step"
        )
    return None


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
        covered = _approval_covers_compensation(world, s, step, cap)
        s.compensation = _compensation_for(step, cap, key, inputs, {}, context, covered)
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

        verdict = evaluate(world.policies, _query(world, s.name, cap, irreversible=step.irreversible, inputs=inputs))
        # A step runs only if its undo could run too: its compensation is decided for the same principal
        # now (its inputs need the step's outputs, so their schema is checked when it runs).
        undo_id = _compensation_capability(step, cap)
        undo_cap = world.capabilities.get(undo_id) if undo_id else None
        if undo_id and undo_cap is None:
            problem = f"its compensation {undo_id} is not a known capability"
            s.phase, s.finished_at, s.error = StepPhase.FAILED, iso(now), problem
            _fail(status, Reason.STEP_FAILED, f"step {s.name} failed: {problem}")
            continue
        undo = evaluate(world.policies, _query(world, s.name, undo_cap)) if undo_cap else None
        decision, reason = verdict.decision, verdict.reason
        if undo is not None and SEVERITY[undo.decision] > SEVERITY[decision]:
            decision, reason = undo.decision, f"its compensation {undo_id}: {undo.reason}"
        if s.decision is None:
            s.decision = decision
            s.policy = _truncate(reason)
            s.audit = [v.explanation for v in verdict.audit_only] or None
            s.condition = _condition_of(verdict)
        if decision is Decision.DENY:
            s.decision, s.policy = Decision.DENY, _truncate(reason)
            s.condition = _condition_of(verdict) or s.condition
            s.phase, s.finished_at = StepPhase.FAILED, iso(now)
            why = reason if verdict.decision is Decision.DENY else f"{reason} (the step could not be undone)"
            s.error = _truncate(f"denied by policy: {why}")
            _fail(status, Reason.POLICY_DENIED, f"step {s.name} was denied: {why}")
            result.events.append(Event("Warning", "PolicyDenied", f"step {s.name}: {why}"))
            continue
        undo_asks = undo is not None and undo.decision is Decision.REQUIRE_APPROVAL
        if verdict.decision is Decision.REQUIRE_APPROVAL or undo_asks:
            asking = [v for v in (verdict, undo if undo_asks else None) if v is not None]
            asked = [v for v in asking if v.decision is Decision.REQUIRE_APPROVAL]
            approvers, notify = _who_approves(asked)
            if _names_nobody(approvers, asked):
                # An Approval without approvers may be decided by anyone: never the answer to two rules
                # that each name their own people.
                problem = (
                    f"no approver is named both by the rule that asks for {cap.id} and by the rule that "
                    f"asks for its compensation {undo_id}: nobody could approve the step"
                )
                s.phase, s.finished_at, s.error = StepPhase.FAILED, iso(now), problem
                _fail(status, Reason.POLICY_DENIED, f"step {s.name} was denied: {problem}")
                result.events.append(Event("Warning", "PolicyDenied", f"step {s.name}: {problem}"))
                continue
            covered = CoveredCompensation(undo_cap.id, undo_cap.risk.level) if undo_asks and undo_cap else None
            if not _gate(world, status, result, s, step, cap, inputs, approvers, notify, covered):
                continue

        s.phase, s.attempts = StepPhase.RUNNING, s.attempts + 1
        s.started_at, s.next_attempt_at, s.finished_at = iso(now), None, None
        s.idempotency_key = s.idempotency_key or idempotency_key(world.ref, s.name)
        result.actions.append(RunAction(s.name, cap.id, inputs, s.idempotency_key, s.attempts, step.timeout_seconds))


def _who_approves(asking: Sequence[PolicyResult]) -> tuple[Approvers | None, str | None]:
    """Who may decide an Approval that answers every one of ASKING (the step's own decision and its
    compensation's): when several rules name approvers, only people all of them name (empty when no
    one is: see the caller), as many of them as the largest quorum asks; the first notification URL."""
    every = [v.deciding.approvers for v in asking if v.deciding and v.deciding.approvers]
    named = [a for a in every if a.users or a.groups]
    notify = next((v.deciding.notify_url for v in asking if v.deciding and v.deciding.notify_url), None)
    count = max((a.count for a in every), default=1)
    if not named:
        return (Approvers(count=count) if count > 1 else None), notify
    approvers = named[0]
    for other in named[1:]:
        approvers = Approvers(
            users=[u for u in approvers.users if u in other.users],
            groups=[g for g in approvers.groups if g in other.groups],
        )
    return approvers.model_copy(update={"count": count}), notify


def _names_nobody(approvers: Approvers | None, asking: Sequence[PolicyResult]) -> bool:
    """Rules named approvers, and no one is named by all of them."""
    named = any(
        v.deciding.approvers.users or v.deciding.approvers.groups for v in asking if v.deciding and v.deciding.approvers
    )
    return approvers is not None and named and not (approvers.users or approvers.groups)


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
    compensation: CoveredCompensation | None = None,
) -> bool:
    """A step that needs a person. True when it is approved and may run now (an explicit Approval step
    succeeds at once instead). COMPENSATION: the step's undo needs approval too; the Approval asks for
    both, and once approved it covers the compensation as well."""
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
        if compensation is not None:
            message += (
                f" Approving also approves its compensation {compensation.capability} "
                f"({compensation.risk.value} risk), which runs if the workflow is undone."
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
                compensation,
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
        if compensation is not None and state.compensation != compensation.capability:
            # Asked before its compensation needed approval (the policies changed): it cannot cover it.
            s.phase, s.finished_at = StepPhase.FAILED, iso(now)
            s.error = (
                f"approval {name} did not cover the compensation {compensation.capability}, "
                "which now needs approval too"
            )
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
        if c.phase is StepPhase.RUNNING and s.name in world.compensating:
            return
        if c.inputs is None:  # its inputs could not be rendered when the step completed
            _compensation_failed(s, c, c.error or "its inputs could not be rendered", now, result)
            continue
        next_attempt = parse_time(c.next_attempt_at)
        if c.phase is not StepPhase.RUNNING and next_attempt is not None and next_attempt > now:
            result.wake(next_attempt)
            return
        # Decided before every attempt, a re-run after a restart included: never retried, since the
        # same policies and inputs give the same answer.
        refusal = _compensation_refusal(world, s, c)
        if refusal is not None:
            _compensation_failed(s, c, refusal, now, result)
            continue
        if c.phase is StepPhase.RUNNING:  # interrupted by a restart: compensations are re-runnable
            result.compensations.append(RunCompensation(s.name, c.capability or "", c.inputs, key, c.attempts))
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


def _compensation_failed(s: StepStatus, c: CompensationStatus, error: str, now: datetime, result: Plan) -> None:
    c.phase, s.phase, c.finished_at = StepPhase.COMPENSATION_FAILED, StepPhase.COMPENSATION_FAILED, iso(now)
    c.error = _truncate(error)
    result.events.append(Event("Warning", "CompensationFailed", f"step {s.name}: {c.error}"))


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
        covered = _approval_covers_compensation(world, s, step, cap)
        s.compensation = _compensation_for(step, cap, key, outcome.inputs, outputs, context, covered)
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
        covered = _approval_covers_compensation(world, s, step, cap)
        s.compensation = _compensation_for(step, cap, key, outcome.inputs, {}, context, covered)
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


def record_approval_refused(world: World, step: str, error: str) -> WorkflowStatus:
    """The Approval of STEP could not be created (its name is taken by another workflow's Approval,
    which is never deleted): the step fails with ERROR, and the workflow compensates."""
    status = world.status.model_copy(deep=True)
    s = status.step(step)
    if s.phase is not StepPhase.AWAITING_APPROVAL:
        return status
    s.phase, s.finished_at, s.error = StepPhase.FAILED, iso(world.now), _truncate(error)
    _fail(status, Reason.STEP_FAILED, f"step {s.name}: {s.error}")
    return status


def record_rate_limited(world: World, step: str, message: str) -> WorkflowStatus:
    """STEP was about to start but a policy's rate limit allows no more steps now: it never ran; it is
    DENY with reason RateLimited (MESSAGE: which limit, when its window frees), and the workflow compensates."""
    status = world.status.model_copy(deep=True)
    s = status.step(step)
    if s.phase is not StepPhase.RUNNING:
        return status
    s.phase, s.finished_at, s.started_at = StepPhase.FAILED, iso(world.now), None
    s.attempts = max(0, s.attempts - 1)
    s.decision, s.policy = Decision.DENY, _truncate(message)
    s.error = _truncate(f"denied: {message}")
    _fail(status, Reason.RATE_LIMITED, f"step {s.name} was denied: {message}")
    return status
