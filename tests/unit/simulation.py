"""Drives the pure engine the way the operator does, with capability outcomes decided by the test.
No cluster, no I/O: time is simulated."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller.api.capability import CapabilitySpec
from controller.api.policy import PolicyObject, PolicySpec, Principal, Rule
from controller.api.workflow import Decision, StepPhase, WorkflowSpec, WorkflowStatus
from controller.capabilities.registry import load_file
from controller.engine import saga

SPECS = Path(__file__).resolve().parents[2] / "capabilities"
CAPS: dict[str, CapabilitySpec] = {
    s.id: s for f in ("sys.yaml", "io.fs.yaml", "net.http.yaml", "test.yaml") for s in load_file(SPECS / f)
}
ALLOW_ALL = [PolicyObject(name="allow", spec=PolicySpec(rules=[Rule(capabilities=["*"], action=Decision.ALLOW)]))]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def workflow(*steps: dict[str, Any], **spec: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate({"steps": list(steps), **spec})


def step(name: str, capability: str = "io.fs.write_file", deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    inputs = extra.pop("inputs", {"path": f"{name}.txt", "content": name} if capability.startswith("io.fs") else {})
    return {"name": name, "capability": capability, "dependsOn": list(deps), "inputs": inputs, **extra}


Outcome = Callable[[saga.RunAction], saga.ActionResult]


def succeed(action: saga.RunAction) -> saga.ActionResult:
    return saga.ActionResult(action.step, True, action.inputs, {"path": action.inputs.get("path", "")})


@dataclass
class Trace:
    status: WorkflowStatus
    started: list[tuple[str, int, int]] = field(default_factory=list)  # (step, attempt, round)
    compensated: list[str] = field(default_factory=list)
    approvals: list[saga.RequestApproval] = field(default_factory=list)
    events: list[saga.Event] = field(default_factory=list)
    deps_violations: list[str] = field(default_factory=list)
    rounds: int = 0


def unchanged_input(function: Callable[..., Any], world: saga.World, *args: Any) -> Any:
    """FUNCTION's result, after checking that it left WORLD's status as it was: the engine works on a
    WorkflowStatus.fork(), which shares the plain dicts and lists (outputs, inputs) with its original, so a
    change made in place to one of them would reach the status the runner still holds."""
    before = world.status.model_dump()
    result = function(world, *args)
    assert world.status.model_dump() == before, f"{function.__name__} changed the status it was given"
    return result


def run(
    spec: WorkflowSpec,
    outcome: Outcome = succeed,
    *,
    policies: list[PolicyObject] | None = None,
    status: WorkflowStatus | None = None,
    approvals: Mapping[str, saga.ApprovalState] | None = None,
    compensation_ok: Callable[[str, int], bool] = lambda step, attempt: True,
    ref: saga.WorkflowRef | None = None,
    max_rounds: int = 500,
    stop_when: Callable[[Trace], bool] = lambda t: False,
    step_seconds: float = 0.1,
) -> Trace:
    ref = ref or saga.WorkflowRef("wf", "ns", "uid-1")
    now = T0
    trace = Trace(status or WorkflowStatus())
    approvals = dict(approvals or {})

    def world(now: datetime) -> saga.World:
        return saga.World(
            ref=ref,
            spec=spec,
            status=trace.status,
            capabilities=CAPS,
            policies=ALLOW_ALL if policies is None else policies,
            principal=Principal(user="bob", groups=["developers"]),
            now=now,
            approvals=approvals,
        )

    for trace.rounds in range(1, max_rounds + 1):
        plan = unchanged_input(saga.plan, world(now))
        trace.status = plan.status
        trace.events += plan.events
        trace.approvals += plan.approvals
        phases = {s.name: s.phase for s in trace.status.steps}
        deps = {s.name: s.depends_on for s in spec.steps}
        for action in plan.actions:
            trace.started.append((action.step, action.attempt, trace.rounds))
            if any(phases[d] is not StepPhase.SUCCEEDED for d in deps[action.step]):
                trace.deps_violations.append(action.step)
        if plan.finished or stop_when(trace):
            return trace
        now += timedelta(seconds=step_seconds)
        for action in plan.actions:
            trace.status = unchanged_input(saga.record_action, world(now), outcome(action))
        for comp in plan.compensations:
            trace.compensated.append(comp.step)
            result = saga.CompensationResult(comp.step, compensation_ok(comp.step, comp.attempt), "undo failed")
            trace.status = unchanged_input(saga.record_compensation, world(now), result)
        if not plan.actions and not plan.compensations:
            if plan.wake_at is None:
                return trace  # waiting for something outside (an approval)
            now = max(now, plan.wake_at)
    raise AssertionError(f"no end after {max_rounds} rounds: {trace.status.phase}")
