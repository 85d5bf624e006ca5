"""Property-based tests of the pure engine: random DAGs and failure points."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.workflow import TERMINAL_PHASES, StepPhase, WorkflowPhase
from controller.engine import saga
from tests.unit.simulation import run, step, succeed, workflow


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[dict[str, object]], str | None, int]:
    n = draw(st.integers(min_value=1, max_value=8))
    names = [f"s{i}" for i in range(n)]
    steps = []
    for i, name in enumerate(names):
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=3)) if i else []
        steps.append(step(name, deps=tuple(deps), retry={"limit": draw(st.integers(0, 2)), "backoffSeconds": 0.5}))
    order = draw(st.permutations(steps))  # spec order need not be topological
    failing = draw(st.one_of(st.none(), st.sampled_from(names)))
    flaky_attempts = draw(st.integers(0, 3))
    return list(order), failing, flaky_attempts


@settings(max_examples=300, deadline=None)
@given(dags())
def test_saga_invariants(case: tuple[list[dict[str, object]], str | None, int]) -> None:
    steps, failing, flaky_attempts = case
    spec = workflow(*steps)

    def outcome(action: saga.RunAction) -> saga.ActionResult:
        if action.step == failing and action.attempt <= flaky_attempts:
            return saga.ActionResult(action.step, False, action.inputs, error="injected")
        return succeed(action)

    trace = run(spec, outcome)
    status = trace.status
    assert status.phase in TERMINAL_PHASES
    # No step starts before all of its dependencies have succeeded.
    assert trace.deps_violations == []
    completed = sorted((s for s in status.steps if s.completion is not None), key=lambda s: s.completion or 0)
    if status.phase is WorkflowPhase.SUCCEEDED:
        assert trace.compensated == []
        assert all(s.phase is StepPhase.SUCCEEDED for s in status.steps)
    else:
        assert status.phase is WorkflowPhase.COMPENSATED or (status.phase is WorkflowPhase.FAILED and not completed)
        # Every completed step is compensated exactly once, in reverse completion order.
        assert trace.compensated == [s.name for s in reversed(completed)]
        assert all(s.phase is StepPhase.COMPENSATED for s in completed)
    # A step runs at most 1 + retry.limit times.
    limits = {str(s["name"]): s["retry"]["limit"] for s in steps}  # type: ignore[index]
    for name, attempt, _ in trace.started:
        assert attempt <= 1 + limits[name]
