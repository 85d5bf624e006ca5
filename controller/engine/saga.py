"""The workflow state machine (pure): given everything known about a workflow, what happens next.

`plan(world)` returns the next status and the commands to carry out once that status is durable: start
these actions, start these compensations, request these approvals, cancel these attempts, and when to
look again. `record_action` and `record_compensation` fold an outcome into the status. The operator
writes the status (one PATCH) before it starts what the plan says, so a side effect never starts without
its checkpoint, and it folds outcomes into the next plan's status, so a result and the next steps'
start share one PATCH.

What a step of each type does is its kind's (controller.engine.steps); the types this module reads and
returns are in controller.engine.state, and are importable from here too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta  # noqa: F401  (saga.UTC, saga.datetime: used by tests)

from controller.api.policy import Principal  # noqa: F401  (saga.Principal: used by tests)
from controller.api.workflow import (
    TERMINAL_PHASES,
    CompensationStatus,
    Decision,
    EventType,
    Reason,
    StepPhase,
    StepStatus,
    WorkflowPhase,
    WorkflowStatus,
)
from controller.engine import dag
from controller.engine.conditions import conditions_for
from controller.engine.redaction import redact
from controller.engine.schema import validate_inputs
from controller.engine.state import (
    APPROVAL_TTL,
    COMPENSATION_RETRY,
    KEY_PREFIX_CHARS,
    MAX_ERROR_CHARS,
    MAX_OBJECT_NAME,
    MAX_OUTPUT_BYTES,
    MAX_OUTPUT_VALUE_BYTES,
    ActionResult,
    ApprovalState,
    CompensationResult,
    CoveredCompensation,
    Event,
    ExpireApproval,
    Plan,
    Planning,
    RequestApproval,
    RunAction,
    RunCompensation,
    WorkflowRef,
    World,
    approval_name,
    bound_outputs,
    fail_step,
    idempotency_key,
    inputs_hash,
    iso,
    next_completion,
    parse_time,
    query,
    render_compensation,
    stop,
    template_context,
    truncate,
)
from controller.engine.steps import kind_of
from controller.engine.validation import spec_errors
from controller.policy.evaluate import evaluate

__all__ = [
    "APPROVAL_TTL",
    "COMPENSATION_RETRY",
    "KEY_PREFIX_CHARS",
    "MAX_ERROR_CHARS",
    "MAX_OBJECT_NAME",
    "MAX_OUTPUT_BYTES",
    "MAX_OUTPUT_VALUE_BYTES",
    "ActionResult",
    "ApprovalState",
    "CompensationResult",
    "CoveredCompensation",
    "Event",
    "ExpireApproval",
    "Plan",
    "RequestApproval",
    "RunAction",
    "RunCompensation",
    "WorkflowRef",
    "World",
    "approval_name",
    "bound_outputs",
    "idempotency_key",
    "inputs_hash",
    "iso",
    "parse_time",
    "plan",
    "record_action",
    "record_approval_refused",
    "record_compensation",
    "record_rate_limited",
    "redact",
    "spec_errors",
    "template_context",
]


# -- the state machine -------------------------------------------------------------------------------


def plan(world: World) -> Plan:
    status = world.status.fork()
    p = Planning(world, status, Plan(status))
    _initialise(world, status)
    finished = status.phase in TERMINAL_PHASES and not _rollback_requested(p)
    if finished or (status.phase is WorkflowPhase.PENDING and not _admit(p)):
        p.plan.finished = True
    else:
        if status.phase in (WorkflowPhase.RUNNING, WorkflowPhase.AWAITING_APPROVAL):
            _run(p)
        if status.phase is WorkflowPhase.COMPENSATING:
            _compensate(world, status, p.plan)
    _finish(world, status)
    return p.plan


def _initialise(world: World, status: WorkflowStatus) -> None:
    if status.phase is None:
        status.phase = WorkflowPhase.PENDING
    known = {s.name: s for s in status.steps}
    status.steps = [known.get(step.name) or StepStatus(name=step.name) for step in world.spec.steps]
    status.observed_generation = world.ref.generation
    if not status.principal:
        status.principal = world.principal.user


def _rollback_requested(p: Planning) -> bool:
    """A finished workflow whose spec.rollback was set: it compensates (True), else it stays finished."""
    status, world = p.status, p.world
    if not (world.spec.rollback and status.phase is WorkflowPhase.SUCCEEDED and not world.ref.deleting):
        return False
    status.phase = WorkflowPhase.COMPENSATING
    status.reason, status.message = Reason.ROLLBACK_REQUESTED.value, "spec.rollback was set"
    status.finished_at = None
    p.event(EventType.NORMAL, "RollbackRequested", "compensating the completed steps")
    return True


def _admit(p: Planning) -> bool:
    """A workflow that has not started starts (True), unless its spec cannot run or no principal was
    attested for it: then it fails at once, every step skipped."""
    status, world = p.status, p.world
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
        status.reason, status.message = reason.value, truncate("; ".join(errors))
        status.finished_at = iso(world.now)
        for s in status.steps:
            s.phase = StepPhase.SKIPPED
        p.event(EventType.WARNING, reason.value, status.message)
        return False
    status.phase = WorkflowPhase.RUNNING
    status.started_at = iso(world.now)
    p.event(EventType.NORMAL, "Started", f"{len(world.spec.steps)} steps")
    return True


def _finish(world: World, status: WorkflowStatus) -> None:
    done = sum(1 for s in status.steps if s.phase is StepPhase.SUCCEEDED)
    status.progress = f"{done}/{len(status.steps)}"
    status.conditions = conditions_for(status, world.ref.generation, world.now, iso)


def _run(p: Planning) -> None:
    """A running workflow: recover what a restart interrupted, stop if it must, start what is ready,
    then settle its phase."""
    _recover_interrupted(p)
    if p.status.reason is None:
        _check_stop_reasons(p)
    if p.status.reason is None:
        _start_ready_steps(p)
    _settle(p)


def _recover_interrupted(p: Planning) -> None:
    """A step Running but not in flight was interrupted by a restart of the operator: its kind decides."""
    specs = {s.name: s for s in p.world.spec.steps}
    for s in p.status.steps:
        if s.phase is StepPhase.RUNNING and s.name not in p.world.in_flight:
            kind_of(specs[s.name]).recover(p, s, specs[s.name])


def _check_stop_reasons(p: Planning) -> None:
    """Why the workflow must stop starting steps, if it must: deletion, rollback, its deadline."""
    world, status = p.world, p.status
    deadline = None
    if world.spec.timeout_seconds and status.started_at:
        started = parse_time(status.started_at)
        assert started is not None
        deadline = started + timedelta(seconds=world.spec.timeout_seconds)
    if world.ref.deleting:
        stop(status, Reason.DELETED, "the workflow is being deleted")
    elif world.spec.rollback:
        stop(status, Reason.ROLLBACK_REQUESTED, "spec.rollback was set")
    elif deadline is not None and p.now >= deadline:
        stop(status, Reason.TIMEOUT, f"the workflow did not finish within {world.spec.timeout_seconds} s")
        p.plan.cancel.extend(sorted(world.in_flight))
    elif deadline is not None:
        p.plan.wake(deadline)


def _start_ready_steps(p: Planning) -> None:
    """Topological order: a step that an approval lets pass in this very pass frees its dependents too."""
    specs = {s.name: s for s in p.world.spec.steps}
    by_name = {s.name: s for s in p.status.steps}
    for name in dag.topological_order(p.world.spec.steps):
        if p.status.reason is not None:
            return
        s, step = by_name[name], specs[name]
        if s.phase not in (StepPhase.PENDING, StepPhase.AWAITING_APPROVAL):
            continue
        if not all(by_name[d].phase is StepPhase.SUCCEEDED for d in step.depends_on):
            continue
        next_attempt = parse_time(s.next_attempt_at)
        if next_attempt is not None and next_attempt > p.now:
            p.plan.wake(next_attempt)
            continue
        kind_of(step).start(p, s, step)


def _settle(p: Planning) -> None:
    """The workflow's phase after this pass: stopping (compensating, or failed when nothing needs
    undoing) once nothing runs, succeeded when every step did, else running or awaiting approval."""
    world, status = p.world, p.status
    running = [s for s in status.steps if s.phase is StepPhase.RUNNING]
    if status.reason is not None:
        if running or world.in_flight:
            return  # let the attempts in flight end; their results are recorded, then we compensate
        for s in status.steps:
            if s.phase in (StepPhase.PENDING, StepPhase.AWAITING_APPROVAL):
                s.phase = StepPhase.SKIPPED
        if any(s.compensation is not None for s in status.steps):
            status.phase = WorkflowPhase.COMPENSATING
            p.event(EventType.WARNING, "Compensating", status.message or "")
        else:
            status.phase = WorkflowPhase.FAILED
            status.finished_at = iso(p.now)
            p.plan.finished = not world.in_flight
            p.event(EventType.WARNING, "Failed", status.message or "")
        return
    if all(s.phase is StepPhase.SUCCEEDED for s in status.steps):
        status.phase = WorkflowPhase.SUCCEEDED
        status.reason, status.message = None, None
        status.finished_at = iso(p.now)
        p.plan.finished = True
        p.event(EventType.NORMAL, "Succeeded", f"{len(status.steps)} steps succeeded")
        return
    waiting = any(s.phase is StepPhase.AWAITING_APPROVAL for s in status.steps)
    status.phase = WorkflowPhase.AWAITING_APPROVAL if waiting and not running else WorkflowPhase.RUNNING


# -- compensation ------------------------------------------------------------------------------------


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
    verdict = evaluate(world.policies, query(world, s.name, cap, inputs=c.inputs))
    c.decision, c.policy = verdict.decision, truncate(verdict.reason)
    if verdict.decision is Decision.DENY:
        return f"compensation {cap.id} denied by policy: {verdict.reason}"
    if verdict.decision is Decision.REQUIRE_APPROVAL and not c.approved:
        return (
            f"compensation {cap.id} requires approval ({verdict.reason}) and the step's approval did not "
            "cover it: a person must undo the step"
        )
    return None


def _compensate(world: World, status: WorkflowStatus, result: Plan) -> None:
    """One compensation at a time, in reverse completion order, each retried with backoff; once none is
    left to run, the workflow ends Compensated (or CompensationFailed: a person must act)."""
    order = sorted(
        (s for s in status.steps if s.compensation is not None and s.completion is not None),
        key=lambda s: s.completion or 0,
        reverse=True,
    )
    for s in order:
        if _compensate_step(world, s, result):
            return
    failed = [s.name for s in order if s.compensation and s.compensation.phase is StepPhase.COMPENSATION_FAILED]
    status.phase = WorkflowPhase.COMPENSATION_FAILED if failed else WorkflowPhase.COMPENSATED
    status.finished_at = iso(world.now)
    result.finished = True
    if failed:
        message = f"could not compensate {', '.join(failed)}: a person must act"
        result.events.append(Event(EventType.WARNING, "CompensationFailed", message))
    else:
        result.events.append(Event(EventType.NORMAL, "Compensated", f"{len(order)} steps compensated in reverse order"))


def _compensate_step(world: World, s: StepStatus, result: Plan) -> bool:
    """Takes S's compensation further. True while it runs or waits (the next ones wait for it); False
    when it is over (done, failed, refused, or nothing to undo) and the next one may go."""
    c = s.compensation
    assert c is not None
    if c.phase in (StepPhase.COMPENSATED, StepPhase.COMPENSATION_FAILED):
        return False
    if s.phase is StepPhase.FAILED and not s.in_doubt:
        return False  # it never took effect
    if c.phase is StepPhase.RUNNING and s.name in world.compensating:
        return True
    if c.inputs is None:  # its inputs could not be rendered when the step completed
        _compensation_failed(s, c, c.error or "its inputs could not be rendered", world.now, result)
        return False
    next_attempt = parse_time(c.next_attempt_at)
    if c.phase is not StepPhase.RUNNING and next_attempt is not None and next_attempt > world.now:
        result.wake(next_attempt)
        return True
    # Decided before every attempt, a re-run after a restart included: never retried, since the same
    # policies and inputs give the same answer.
    refusal = _compensation_refusal(world, s, c)
    if refusal is not None:
        _compensation_failed(s, c, refusal, world.now, result)
        return False
    if c.phase is not StepPhase.RUNNING:  # else interrupted by a restart: compensations are re-runnable
        c.phase, c.attempts, c.next_attempt_at = StepPhase.RUNNING, c.attempts + 1, None
        c.started_at = c.started_at or iso(world.now)
        s.phase = StepPhase.COMPENSATING
    key = idempotency_key(world.ref, s.name, "compensation")
    result.compensations.append(RunCompensation(s.name, c.capability or "", c.inputs, key, c.attempts))
    return True


def _compensation_failed(s: StepStatus, c: CompensationStatus, error: str, now: datetime, result: Plan) -> None:
    c.phase, s.phase, c.finished_at = StepPhase.COMPENSATION_FAILED, StepPhase.COMPENSATION_FAILED, iso(now)
    c.error = truncate(error)
    result.events.append(Event(EventType.WARNING, "CompensationFailed", f"step {s.name}: {c.error}"))


# -- outcomes ----------------------------------------------------------------------------------------


def record_action(world: World, outcome: ActionResult) -> WorkflowStatus:
    """Folds the outcome of one attempt into the status (of WORLD; its `now` is the time of the outcome)."""
    status = world.status.fork()
    s = status.step(outcome.step)
    if s.phase is not StepPhase.RUNNING:
        return status  # stale: the step moved on meanwhile
    step = next(x for x in world.spec.steps if x.name == outcome.step)
    s.finished_at = iso(world.now)
    if outcome.ok:
        outputs = dict(outcome.outputs or {})
        s.phase, s.error, s.outputs = StepPhase.SUCCEEDED, None, bound_outputs(outputs)
        s.completion = next_completion(status)
        s.compensation = render_compensation(world, status, s, step, outcome.inputs, outputs)
        return status
    s.error = truncate(outcome.error or "failed")
    if outcome.retryable and not outcome.cancelled and s.attempts <= step.retry.limit:
        s.phase = StepPhase.PENDING
        s.next_attempt_at = iso(world.now + timedelta(seconds=step.retry.delay(s.attempts)))
        return status
    attempts = f" after {s.attempts} attempts" if s.attempts > 1 else ""
    fail_step(status, s, world.now, s.error, how=f"failed{attempts}")
    if outcome.timed_out or outcome.cancelled:
        # A cut-off attempt may have taken effect: compensate it (compensations tolerate "never happened").
        s.in_doubt = True
        s.completion = next_completion(status)
        s.compensation = render_compensation(world, status, s, step, outcome.inputs, {})
    return status


def record_compensation(world: World, outcome: CompensationResult) -> WorkflowStatus:
    status = world.status.fork()
    s = status.step(outcome.step)
    c = s.compensation
    if c is None or c.phase is not StepPhase.RUNNING:
        return status
    now = iso(world.now)
    if outcome.ok:
        c.phase, c.error, c.finished_at = StepPhase.COMPENSATED, None, now
        s.phase = StepPhase.COMPENSATED
        return status
    c.error = truncate(outcome.error or "failed")
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
    status = world.status.fork()
    s = status.step(step)
    if s.phase is StepPhase.AWAITING_APPROVAL:
        fail_step(status, s, world.now, error, how="")
    return status


def record_rate_limited(world: World, step: str, message: str) -> WorkflowStatus:
    """STEP was about to start but a policy's rate limit allows no more steps now: it never ran; it is
    DENY with reason RateLimited (MESSAGE: which limit, when its window frees), and the workflow compensates."""
    status = world.status.fork()
    s = status.step(step)
    if s.phase is not StepPhase.RUNNING:
        return status
    s.attempts, s.started_at = max(0, s.attempts - 1), None
    s.decision, s.policy = Decision.DENY, truncate(message)
    fail_step(status, s, world.now, f"denied: {message}", reason=Reason.RATE_LIMITED, how="was denied", detail=message)
    return status
