"""The step-type seam (engine.steps): every type has a kind, and plan(), recovery, the front doors and
`airun plan` ask it rather than the step's fields."""

from __future__ import annotations

from controller.api.approval import ApprovalPhase
from controller.api.policy import PolicyObject, PolicySpec, Principal, Rule
from controller.api.workflow import (
    Decision,
    Reason,
    StepPhase,
    StepStatus,
    StepType,
    WorkflowPhase,
    WorkflowSpec,
    WorkflowStatus,
)
from controller.client.workflows import step_label
from controller.engine import saga, steps
from controller.engine.state import Plan, Planning, fail_step
from tests.unit.simulation import ALLOW_ALL, CAPS, T0, run, step, workflow

GATED = workflow(step("write"), {"name": "gate", "type": "Approval", "dependsOn": ["write"]})


def world(
    spec: WorkflowSpec = GATED, status: WorkflowStatus | None = None, policies: list[PolicyObject] = ALLOW_ALL
) -> saga.World:
    return saga.World(
        ref=saga.WorkflowRef("wf", "ns", "uid-1"),
        spec=spec,
        status=status or WorkflowStatus(),
        capabilities=CAPS,
        policies=policies,
        principal=Principal(user="bob", groups=["developers"]),
        now=T0,
    )


def test_every_step_type_has_a_kind() -> None:
    assert set(steps.KINDS) == set(StepType)


def test_front_doors_label_steps_through_their_kind() -> None:
    assert step_label({"name": "w", "capability": "io.fs.write_file"}) == "io.fs.write_file"
    assert step_label({"name": "g", "type": "Approval"}) == "(approval)"


def test_an_approval_gate_found_running_is_gated_again_not_put_in_doubt() -> None:
    """Nothing runs for a gate, so a restart has nothing to recover (no capability is assumed)."""
    status = WorkflowStatus(
        phase=WorkflowPhase.RUNNING,
        started_at="2026-01-01T00:00:00Z",
        steps=[
            StepStatus(name="write", phase=StepPhase.SUCCEEDED, completion=1),
            StepStatus(name="gate", phase=StepPhase.RUNNING),
        ],
    )
    plan = saga.plan(world(status=status))
    gate = plan.status.step("gate")
    assert gate.phase is StepPhase.AWAITING_APPROVAL and not gate.in_doubt
    assert [a.step for a in plan.approvals] == ["gate"] and plan.status.reason is None


def test_an_approved_gate_succeeds_naming_who_approved_it() -> None:
    waiting = run(GATED)
    request = waiting.approvals[0]
    approved = {"gate": saga.ApprovalState(request.name, ApprovalPhase.APPROVED, decided_by="alice")}
    done = run(GATED, status=waiting.status, approvals=approved)
    assert done.status.phase is WorkflowPhase.SUCCEEDED
    assert done.status.step("gate").outputs == {"approvedBy": "alice"}


def test_preview_decides_like_the_engine() -> None:
    deny_writes = [
        PolicyObject(
            name="no-writes",
            spec=PolicySpec(rules=[Rule(capabilities=["io.fs.write_file"], action=Decision.DENY)]),
        ),
        *ALLOW_ALL,
    ]
    rows = {p.step: p for p in steps.preview(world(policies=deny_writes))}
    assert rows["write"].decision is Decision.DENY and rows["write"].undone_by == "io.fs.restore"
    assert rows["write"].inputs == {"path": "write.txt", "content": "write"}
    assert rows["gate"].decision is Decision.REQUIRE_APPROVAL and rows["gate"].label == "(approval)"
    trace = run(GATED, policies=deny_writes)
    assert trace.status.step("write").decision is Decision.DENY  # what the operator decides


def test_preview_knows_run_time_templates_by_what_they_read() -> None:
    spec = workflow(
        step("a"),
        step("b", deps=("a",), inputs={"path": "{{ steps.a.outputs.path }}.copy", "content": "x"}),
        step("c", inputs={"path": "{{ params.missing }}", "content": "x"}),
    )
    rows = {p.step: p for p in steps.preview(world(spec=spec))}
    assert rows["b"].run_time and rows["b"].template_error is None and rows["b"].inputs is None
    assert not rows["c"].run_time and "missing" in (rows["c"].template_error or "")


def test_fail_step_is_the_one_failure_path() -> None:
    status = WorkflowStatus(steps=[StepStatus(name="a"), StepStatus(name="b")])
    p = Planning(world(), status, Plan(status))
    fail_step(status, status.step("a"), T0, "denied by policy: x", how="was denied", detail="x", events=p.plan.events)
    fail_step(status, status.step("b"), T0, "later")
    a = status.step("a")
    assert (a.phase, a.error, a.finished_at) == (StepPhase.FAILED, "denied by policy: x", saga.iso(T0))
    assert status.reason == Reason.STEP_FAILED and status.message == "step a was denied: x"  # the first failure decides
    assert [(e.reason, e.message) for e in p.plan.events] == [(Reason.STEP_FAILED, "step a: x")]
    assert status.step("b").error == "later"
