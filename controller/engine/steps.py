"""What a step of each type does (pure): the one place that knows step types.

`plan()` asks the step's kind, never the step's fields, what to do with it: `KINDS[step.type]`. A kind
says what is wrong with such a step before anything runs (`problems`), what happens when it is ready
to start (`start`), what happens when the operator finds it `Running` after a restart (`recover`),
whether its transitions must be durable before the workflow goes on (`durable`), how the front doors
name it (`label`) and what it would do if the workflow started now (`preview`, for `airun plan`).

Two kinds so far: a capability step (type Action) runs a capability once the policies allow it,
perhaps after an approval; an approval gate (type Approval) waits for a person and runs nothing. Both
share the approval gate (`gate`), which asks for an Approval and reads its answer. Adding a type is
one class here, one entry in KINDS, a StepType member and the CRD's shape rule
(docs/architecture.md, "How to add a step type").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from controller.api.approval import ApprovalPhase
from controller.api.capability import CapabilitySpec, RiskLevel
from controller.api.policy import Approvers
from controller.api.workflow import (
    Decision,
    EventType,
    PolicyCondition,
    Reason,
    Step,
    StepPhase,
    StepStatus,
    StepType,
)
from controller.engine import dag
from controller.engine.redaction import redact
from controller.engine.schema import validate_inputs
from controller.engine.state import (
    APPROVAL_TTL,
    ApprovalState,
    CoveredCompensation,
    ExpireApproval,
    Planning,
    RequestApproval,
    RunAction,
    World,
    approval_name,
    fail_step,
    idempotency_key,
    inputs_hash,
    iso,
    next_completion,
    query,
    render_compensation,
    stop,
    template_context,
    truncate,
    undone_by,
)
from controller.engine.templating import TemplateError, render, step_reads
from controller.policy.conditions import bounded
from controller.policy.evaluate import SEVERITY, PolicyResult, evaluate

RUN_TIME_INPUTS = "(rendered at run time: uses outputs of earlier steps)"


@dataclass(frozen=True)
class Preview:
    """What a step would do if the workflow started now (`airun plan`): decided by the same code as the
    operator's, with no status and no side effect. INPUTS is None when they cannot be rendered yet
    (RUN_TIME: they read earlier steps' outputs) or at all (TEMPLATE_ERROR)."""

    step: str
    label: str
    risk: RiskLevel | None = None
    decision: Decision | None = None
    why: str = ""
    undone_by: str | None = None
    inputs: dict[str, Any] | None = None
    run_time: bool = False
    template_error: str | None = None


class StepKind(Protocol):
    """What a step of one type does. P is one pass of plan() (controller.engine.state.Planning): a kind
    changes P.status (the step's S, and the workflow's reason through fail_step/stop) and adds commands
    to P.plan."""

    def problems(self, step: Step, capabilities: Mapping[str, CapabilitySpec]) -> list[str]:
        """What makes STEP impossible to run, found before the workflow starts (the admission webhook)."""
        ...

    def start(self, p: Planning, s: StepStatus, step: Step) -> None:
        """STEP's dependencies succeeded (and its retry backoff, if any, is over): take it further."""
        ...

    def recover(self, p: Planning, s: StepStatus, step: Step) -> None:
        """STEP is Running in status but nothing runs it in this process: the operator restarted."""
        ...

    def durable(self, step: Step, capabilities: Mapping[str, CapabilitySpec]) -> bool:
        """Whether STEP's start and result must be checkpointed before the workflow goes on (False only
        when re-running it after a crash is harmless)."""
        ...

    def label(self, step: Step) -> str:
        """What the front doors show in a step's capability column."""
        ...

    def preview(self, world: World, step: Step) -> Preview: ...


# -- the approval gate, shared by both kinds ---------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """What an Approval asks: to run CAPABILITY with INPUTS (None for an explicit gate), decided by
    APPROVERS (None: anyone the RBAC allows, but never the requester); COMPENSATION when approving also
    approves the step's undo."""

    capability: CapabilitySpec | None = None
    inputs: dict[str, Any] | None = None
    approvers: Approvers | None = None
    notify: str | None = None
    compensation: CoveredCompensation | None = None


def gate(p: Planning, s: StepStatus, step: Step, ask: Ask) -> ApprovalState | None:
    """The step's Approval: requested when there is none yet, read when there is. The approved Approval
    when the step may go on; None while it waits, or when the step failed (rejected, expired, or the
    inputs or the compensation changed since it was asked)."""
    name = s.approval or approval_name(p.world.ref, s.name)
    state = p.world.approvals.get(s.name)
    if state is None or state.name != name:
        _request_approval(p, s, step, ask, name)
        return None
    if state.phase is ApprovalPhase.PENDING:
        if state.expires_at is None or p.now < state.expires_at:
            s.phase = StepPhase.AWAITING_APPROVAL
            if state.expires_at is not None:
                p.plan.wake(state.expires_at)
            return None
        p.plan.expire.append(ExpireApproval(s.name, name))
        state = ApprovalState(state.name, ApprovalPhase.EXPIRED)
    if state.phase is not ApprovalPhase.APPROVED:
        reason = Reason.APPROVAL_REJECTED if state.phase is ApprovalPhase.REJECTED else Reason.APPROVAL_EXPIRED
        by = f" by {state.decided_by}" if state.decided_by else ""
        error = f"approval {name} was {state.phase.lower()}{by}"
        fail_step(p.status, s, p.now, error, reason=reason, how="", events=p.plan.events)
        return None
    problem = _approved_something_else(state, ask, name)
    if problem is not None:
        fail_step(p.status, s, p.now, problem, how="")
        return None
    return state


def _approved_something_else(state: ApprovalState, ask: Ask, name: str) -> str | None:
    if ask.inputs is not None and state.inputs_hash != inputs_hash(ask.inputs):
        return "the inputs changed after they were approved"
    if ask.compensation is not None and state.compensation != ask.compensation.capability:
        # Asked before its compensation needed approval (the policies changed): it cannot cover it.
        return (
            f"approval {name} did not cover the compensation {ask.compensation.capability}, "
            "which now needs approval too"
        )
    return None


def _request_approval(p: Planning, s: StepStatus, step: Step, ask: Ask, name: str) -> None:
    if s.approval is None:
        s.approval, s.phase = name, StepPhase.AWAITING_APPROVAL
        p.event(EventType.NORMAL, "ApprovalRequested", f"step {s.name} waits for approval {name}")
    ttl = timedelta(seconds=step.approval_timeout_seconds) if step.approval_timeout_seconds else APPROVAL_TTL
    cap = ask.capability
    message = step.message or (
        f"Run {cap.id} ({cap.risk.level.value} risk: {cap.risk.reason}) for workflow {p.world.ref.name}?"
        if cap
        else f"Approve step {s.name} of workflow {p.world.ref.name}?"
    )
    if ask.compensation is not None:
        message += (
            f" Approving also approves its compensation {ask.compensation.capability} "
            f"({ask.compensation.risk.value} risk), which runs if the workflow is undone."
        )
    p.plan.approvals.append(
        RequestApproval(
            s.name,
            name,
            cap.id if cap else None,
            cap.risk.level if cap else None,
            redact(ask.inputs or {}),
            inputs_hash(ask.inputs) if ask.inputs is not None else None,
            message,
            ask.approvers,
            p.now + ttl,
            (step.notify.webhook_url if step.notify else None) or ask.notify,
            ask.compensation,
        )
    )


# -- capability steps (type Action) ------------------------------------------------------------------


@dataclass(frozen=True)
class StepVerdict:
    """The policies' answer for running a capability step: its own decision (OWN) and its compensation's
    (UNDO, decided for the same principal: a step runs only if its undo could run too). The most
    restrictive one decides. UNKNOWN_UNDO names a compensation capability that does not exist."""

    decision: Decision
    reason: str
    own: PolicyResult
    undo_capability: CapabilitySpec | None = None
    undo: PolicyResult | None = None
    unknown_undo: str | None = None

    @property
    def asking(self) -> list[PolicyResult]:
        """The answers that ask for approval."""
        return [v for v in (self.own, self.undo) if v is not None and v.decision is Decision.REQUIRE_APPROVAL]


def decide(world: World, step: Step, cap: CapabilitySpec, inputs: Mapping[str, Any] | None) -> StepVerdict:
    """Whether STEP may run CAP with INPUTS (None: not rendered yet) for the workflow's principal now.
    The compensation's inputs need the step's outputs, so its schema is checked when it runs."""
    own = evaluate(world.policies, query(world, step.name, cap, irreversible=step.irreversible, inputs=inputs))
    undo_id = undone_by(step, world.capabilities)
    undo_cap = world.capabilities.get(undo_id) if undo_id else None
    if undo_id and undo_cap is None:
        return StepVerdict(own.decision, own.reason, own, unknown_undo=undo_id)
    undo = evaluate(world.policies, query(world, step.name, undo_cap)) if undo_cap else None
    decision, reason = own.decision, own.reason
    if undo is not None and undo_cap is not None and SEVERITY[undo.decision] > SEVERITY[decision]:
        decision, reason = undo.decision, f"its compensation {undo_cap.id}: {undo.reason}"
    return StepVerdict(decision, reason, own, undo_cap, undo)


def who_approves(asking: Sequence[PolicyResult]) -> tuple[Approvers | None, str | None]:
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


def names_nobody(approvers: Approvers | None, asking: Sequence[PolicyResult]) -> bool:
    """Rules named approvers, and no one is named by all of them."""
    named = any(
        v.deciding.approvers.users or v.deciding.approvers.groups for v in asking if v.deciding and v.deciding.approvers
    )
    return approvers is not None and named and not (approvers.users or approvers.groups)


def condition_of(result: PolicyResult) -> PolicyCondition | None:
    """The condition of the rule that decided, with the values it saw, redacted: for status and audit."""
    verdict = result.deciding
    if verdict is None or verdict.when is None:
        return None
    saw = {key: bounded(value) for key, value in redact(dict(verdict.seen)).items()} if verdict.seen else None
    error = truncate(verdict.error) if verdict.error else None
    return PolicyCondition(rule=f"{verdict.policy} rule {verdict.rule}", when=verdict.when, saw=saw, error=error)


class CapabilityStep:
    """Runs a capability: inputs rendered and checked against its schema, the policies (and perhaps a
    person) allow it and its compensation, then one attempt at a time, each checkpointed first."""

    def problems(self, step: Step, capabilities: Mapping[str, CapabilitySpec]) -> list[str]:
        if not step.capability:
            return [f"step {step.name!r}: an Action step needs a capability (or set type: Approval for a human gate)"]
        cap = capabilities.get(step.capability)
        if cap is None:
            return [f"step {step.name!r}: unknown capability {step.capability!r}"]
        errors = []
        if step.compensation and step.compensation.capability not in capabilities:
            errors.append(f"step {step.name!r}: unknown compensation capability {step.compensation.capability!r}")
        undo = cap.compensation.capability if cap.compensation else None
        if undo and undo not in capabilities:  # its Capability is Ready=False (CompensationUnknown)
            errors.append(
                f"step {step.name!r}: capability {cap.id} is not ready: its compensation {undo!r} is not a "
                "capability (yet)"
            )
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
        if step.idempotent and not cap.honours_step_idempotency:
            errors.append(
                f"step {step.name!r}: idempotent: true needs a capability that sends the Idempotency-Key "
                f"header (net.http.request, custom HTTP capabilities); {cap.id} does not"
            )
        return errors

    def start(self, p: Planning, s: StepStatus, step: Step) -> None:
        cap = p.world.capabilities[step.capability or ""]
        inputs = self._inputs(p, s, step, cap)
        if inputs is not None and self._allowed(p, s, step, cap, inputs):
            s.phase, s.attempts = StepPhase.RUNNING, s.attempts + 1
            s.started_at, s.next_attempt_at, s.finished_at = iso(p.now), None, None
            s.idempotency_key = s.idempotency_key or idempotency_key(p.world.ref, s.name)
            p.plan.actions.append(
                RunAction(s.name, cap.id, inputs, s.idempotency_key, s.attempts, step.timeout_seconds)
            )

    def _inputs(self, p: Planning, s: StepStatus, step: Step, cap: CapabilitySpec) -> dict[str, Any] | None:
        """The rendered inputs, checked against the capability's schema; None when the step failed."""
        try:
            inputs: dict[str, Any] = render(step.inputs, p.context())
        except TemplateError as error:
            fail_step(p.status, s, p.now, str(error))
            return None
        problems = validate_inputs(cap.inputs, inputs)
        if problems:
            fail_step(p.status, s, p.now, f"inputs do not match {cap.id}: " + "; ".join(problems))
            return None
        return inputs

    def _allowed(self, p: Planning, s: StepStatus, step: Step, cap: CapabilitySpec, inputs: dict[str, Any]) -> bool:
        """Whether the step may run now: the policies allow it and its compensation, and when they ask
        for a person, its Approval (covering the compensation too when that asks) is approved. A refusal
        fails the step."""
        verdict = decide(p.world, step, cap, inputs)
        if verdict.unknown_undo:
            fail_step(p.status, s, p.now, f"its compensation {verdict.unknown_undo} is not a known capability")
            return False
        if s.decision is None:
            s.decision, s.policy = verdict.decision, truncate(verdict.reason)
            s.audit = [v.explanation for v in verdict.own.audit_only] or None
            s.condition = condition_of(verdict.own)
        if verdict.decision is Decision.DENY:
            s.decision, s.policy = Decision.DENY, truncate(verdict.reason)
            s.condition = condition_of(verdict.own) or s.condition
            own = verdict.own.decision is Decision.DENY
            why = verdict.reason if own else f"{verdict.reason} (the step could not be undone)"
            fail_step(
                p.status,
                s,
                p.now,
                f"denied by policy: {why}",
                reason=Reason.POLICY_DENIED,
                how="was denied",
                detail=why,
                events=p.plan.events,
            )
            return False
        if not verdict.asking:
            return True
        approvers, notify = who_approves(verdict.asking)
        if names_nobody(approvers, verdict.asking):
            # An Approval without approvers may be decided by anyone: never the answer to two rules that
            # each name their own people.
            problem = (
                f"no approver is named both by the rule that asks for {cap.id} and by the rule that asks "
                f"for its compensation {verdict.undo_capability.id if verdict.undo_capability else '?'}: "
                "nobody could approve the step"
            )
            fail_step(p.status, s, p.now, problem, reason=Reason.POLICY_DENIED, how="was denied", events=p.plan.events)
            return False
        undo = verdict.undo_capability
        undo_asks = verdict.undo is not None and verdict.undo.decision is Decision.REQUIRE_APPROVAL
        covered = CoveredCompensation(undo.id, undo.risk.level) if undo_asks and undo is not None else None
        return gate(p, s, step, Ask(cap, inputs, approvers, notify, covered)) is not None

    def recover(self, p: Planning, s: StepStatus, step: Step) -> None:
        """Run again with the same idempotency key when the capability is idempotent, or when the step
        says its remote API honours the key the capability sends; otherwise whether it took effect is
        unknown: in doubt, the workflow fails (InDoubt) and compensates it."""
        cap = p.world.capabilities.get(step.capability or "")
        key = s.idempotency_key or idempotency_key(p.world.ref, s.name)
        if cap is not None and (cap.idempotent or (step.idempotent and cap.honours_step_idempotency)):
            why = (
                f"{cap.id} is idempotent"
                if cap.idempotent
                else "the step's remote API honours its Idempotency-Key (idempotent: true)"
            )
            try:
                inputs = render(step.inputs, p.context())
            except TemplateError as error:
                fail_step(p.status, s, p.now, str(error))
                return
            p.plan.actions.append(
                RunAction(s.name, cap.id, inputs, key, s.attempts, step.timeout_seconds, recovered=True)
            )
            p.event(
                EventType.NORMAL,
                "Recovered",
                f"step {s.name} was running when the operator stopped; "
                f"{why}, so it runs again with the same idempotency key",
            )
            return
        s.phase, s.in_doubt = StepPhase.FAILED, True
        s.finished_at, s.completion = iso(p.now), next_completion(p.status)
        s.error = (
            "the operator stopped while this step ran and its capability is not idempotent: "
            "whether it took effect is unknown"
        )
        if cap is not None and cap.honours_step_idempotency:
            s.error += " (if the remote API honours the Idempotency-Key header, set idempotent: true on the step)"
        try:
            inputs = render(step.inputs, p.context())
        except TemplateError:
            inputs = {}
        s.compensation = render_compensation(p.world, p.status, s, step, inputs, {})
        stop(p.status, Reason.IN_DOUBT, f"step {s.name} is in doubt after an operator restart")
        p.event(EventType.WARNING, "InDoubt", f"step {s.name}: {s.error}")

    def durable(self, step: Step, capabilities: Mapping[str, CapabilitySpec]) -> bool:
        cap = capabilities.get(step.capability or "")
        return cap is None or bool(cap.side_effects)

    def label(self, step: Step) -> str:
        return step.capability or ""

    def preview(self, world: World, step: Step) -> Preview:
        cap = world.capabilities.get(step.capability or "")
        if cap is None:
            return Preview(step.name, step.capability or "", why="unknown capability")
        inputs: dict[str, Any] | None = None
        run_time, problem = False, None
        try:
            inputs = render(step.inputs, template_context(world.ref, world.spec, world.status))
        except TemplateError as error:
            reads = step_reads(step.inputs)
            run_time = bool(reads.named or reads.dynamic)  # else nothing at run time can fix it (a typo)
            problem = None if run_time else str(error)
        verdict = decide(world, step, cap, inputs)
        return Preview(
            step.name,
            cap.id,
            cap.risk.level,
            verdict.decision,
            verdict.reason,
            undone_by(step, world.capabilities),
            inputs,
            run_time,
            problem,
        )


# -- approval gates (type Approval) ------------------------------------------------------------------


APPROVAL_TAKES_NONE = frozenset({"inputs", "retry", "compensation"})  # fields of Step


class ApprovalGate:
    """An explicit human gate: it runs nothing, and succeeds once a person approved it (its output
    `approvedBy` names them)."""

    def problems(self, step: Step, capabilities: Mapping[str, CapabilitySpec]) -> list[str]:
        # Its shape is checked here, not by a CEL rule on the CRD: the API server would evaluate that
        # rule for every step on every status write (docs/architecture.md, "What is checked where").
        if step.capability is not None:
            return [f"step {step.name!r}: an Approval step is a human gate and takes no capability"]
        given = sorted(APPROVAL_TAKES_NONE & step.model_fields_set)
        if given:
            has = ", ".join(given)
            return [f"step {step.name!r}: an Approval step takes no inputs, retry or compensation (it has {has})"]
        if step.idempotent:
            return [f"step {step.name!r}: an Approval step runs nothing, so it cannot be idempotent"]
        return []

    def start(self, p: Planning, s: StepStatus, step: Step) -> None:
        approved = gate(p, s, step, Ask())
        if approved is not None:
            s.phase, s.finished_at = StepPhase.SUCCEEDED, iso(p.now)
            s.outputs = {"approvedBy": approved.decided_by} if approved.decided_by else {}
            s.completion = next_completion(p.status)

    def recover(self, p: Planning, s: StepStatus, step: Step) -> None:
        s.phase = StepPhase.PENDING  # nothing ran: it is gated again (its Approval, if any, still counts)

    def durable(self, step: Step, capabilities: Mapping[str, CapabilitySpec]) -> bool:
        return True

    def label(self, step: Step) -> str:
        return "(approval)"

    def preview(self, world: World, step: Step) -> Preview:
        return Preview(step.name, self.label(step), decision=Decision.REQUIRE_APPROVAL, why="an explicit approval step")


KINDS: Mapping[StepType, StepKind] = {
    StepType.ACTION: CapabilityStep(),
    StepType.APPROVAL: ApprovalGate(),
}


def kind_of(step: Step) -> StepKind:
    return KINDS[step.type]


def preview(world: World) -> list[Preview]:
    """What each step of WORLD's workflow would do if it started now, in the order they would start
    (spec order when the graph is invalid)."""
    steps = {s.name: s for s in world.spec.steps}
    order = dag.topological_order(world.spec.steps) if not dag.validate(world.spec.steps) else list(steps)
    return [kind_of(steps[name]).preview(world, steps[name]) for name in order]


def deferrable_steps(steps: Sequence[Step], capabilities: Mapping[str, CapabilitySpec]) -> frozenset[str]:
    """The steps whose transitions may wait for the next checkpoint (their kind says they need none)."""
    return frozenset(s.name for s in steps if not kind_of(s).durable(s, capabilities))
