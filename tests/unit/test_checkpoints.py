"""When the runtime writes status before it carries out a plan (engine.checkpoints), without a cluster."""

from __future__ import annotations

from controller.api.workflow import StepPhase, StepStatus, WorkflowPhase, WorkflowStatus
from controller.engine import saga, steps
from controller.engine.checkpoints import must_checkpoint
from tests.unit.simulation import CAPS, step, workflow

SPEC = workflow(
    step("sleep", "sys.sleep", inputs={"seconds": 0}),
    step("write", deps=("sleep",)),
    {"name": "gate", "type": "Approval", "dependsOn": ["write"]},
)
DEFERRABLE = steps.deferrable_steps(SPEC.steps, CAPS)


def status(**phases: StepPhase) -> WorkflowStatus:
    return WorkflowStatus(
        phase=WorkflowPhase.RUNNING,
        steps=[StepStatus(name=s.name, phase=phases.get(s.name, StepPhase.PENDING)) for s in SPEC.steps],
    )


def action(name: str) -> saga.RunAction:
    return saga.RunAction(name, "sys.sleep", {}, f"key-{name}", 1, None)


def test_only_steps_without_side_effects_are_deferrable() -> None:
    assert {"sleep"} == DEFERRABLE  # io.fs.write_file has side effects; an approval gate is always durable


def test_starting_a_step_without_side_effects_rides_along() -> None:
    written = status().dump()
    plan = saga.Plan(status(sleep=StepPhase.RUNNING), actions=[action("sleep")])
    assert not must_checkpoint(plan, written, DEFERRABLE, overdue=False)
    assert must_checkpoint(plan, written, DEFERRABLE, overdue=True)  # but never for longer than FLUSH_AFTER


def test_a_side_effect_never_starts_without_a_write() -> None:
    plan = saga.Plan(status(sleep=StepPhase.SUCCEEDED, write=StepPhase.RUNNING), actions=[action("write")])
    assert must_checkpoint(plan, status().dump(), DEFERRABLE, overdue=False)


def test_a_side_effects_result_never_waits() -> None:
    """The next deferrable start carries the result of a step with side effects: written at once."""
    written = status(write=StepPhase.RUNNING).dump()
    after = status(write=StepPhase.SUCCEEDED, sleep=StepPhase.RUNNING)
    assert must_checkpoint(saga.Plan(after, actions=[action("sleep")]), written, DEFERRABLE, overdue=False)


def test_a_change_of_the_workflow_itself_is_written() -> None:
    after = status(sleep=StepPhase.RUNNING)
    after.reason = "StepFailed"
    assert must_checkpoint(saga.Plan(after, actions=[action("sleep")]), status().dump(), DEFERRABLE, overdue=False)


def test_plans_that_start_nothing_or_finish_are_written() -> None:
    written = status().dump()
    assert must_checkpoint(saga.Plan(status()), written, DEFERRABLE, overdue=False)
    finished = saga.Plan(status(sleep=StepPhase.RUNNING), actions=[action("sleep")], finished=True)
    assert must_checkpoint(finished, written, DEFERRABLE, overdue=False)


def test_an_unknown_step_counts_as_having_side_effects() -> None:
    plan = saga.Plan(status(), actions=[action("not-in-the-spec")])
    assert must_checkpoint(plan, status().dump(), DEFERRABLE, overdue=False)
