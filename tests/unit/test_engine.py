"""The pure engine: graph, templates, state machine, compensation and recovery rules."""

from __future__ import annotations

import pytest

from controller.api.approval import ApprovalPhase
from controller.api.workflow import Decision, Reason, StepPhase, StepStatus, WorkflowPhase, WorkflowStatus
from controller.engine import dag, saga
from controller.engine.templating import TemplateError, render
from tests.unit.simulation import CAPS, run, step, succeed, workflow


def fail_on(*names: str, retryable: bool = True):  # type: ignore[no-untyped-def]
    def outcome(action: saga.RunAction) -> saga.ActionResult:
        if action.step in names:
            return saga.ActionResult(action.step, False, action.inputs, error="boom", retryable=retryable)
        return succeed(action)

    return outcome


# -- graph --------------------------------------------------------------------------------------------


def test_cycle_is_reported_with_its_path() -> None:
    spec = workflow(step("a", deps=("c",)), step("b", deps=("a",)), step("c", deps=("b",)))
    errors = dag.validate(spec.steps)
    assert len(errors) == 1 and errors[0].startswith("dependency cycle: ")
    path = errors[0].removeprefix("dependency cycle: ").split(" -> ")
    assert path[0] == path[-1] and set(path) == {"a", "b", "c"}


def test_unknown_dependency_is_named() -> None:
    errors = dag.validate(workflow(step("a", deps=("nope",))).steps)
    assert errors == ["step 'a' depends on 'nope', which is not a step of this workflow"]


def test_invalid_spec_fails_before_any_step() -> None:
    trace = run(workflow(step("a", deps=("b",)), step("b", deps=("a",))))
    assert trace.status.phase is WorkflowPhase.FAILED
    assert trace.status.reason == Reason.INVALID_SPEC
    assert "dependency cycle" in (trace.status.message or "")
    assert trace.started == []


def test_unknown_capability_is_invalid_spec() -> None:
    trace = run(workflow(step("a", capability="io.fs.teleport")))
    assert trace.status.reason == Reason.INVALID_SPEC
    assert "unknown capability 'io.fs.teleport'" in (trace.status.message or "")


# -- templates ----------------------------------------------------------------------------------------


def test_template_renders_and_keeps_types() -> None:
    ctx = {"params": {"n": 3, "name": "db"}, "steps": {}}
    assert render({"a": "{{ params.n }}", "b": "x-{{ params.name }}", "c": ["{{ params.n + 1 }}"]}, ctx) == {
        "a": 3,
        "b": "x-db",
        "c": [4],
    }


def test_unknown_reference_is_an_error_naming_it() -> None:
    with pytest.raises(TemplateError, match=r"inputs\.path: .*'x'"):
        render({"path": "{{ steps.x.outputs.path }}"}, {"steps": {}})


def test_sandbox_refuses_unsafe_attributes() -> None:
    with pytest.raises(TemplateError):
        render("{{ params.__class__.__mro__ }}", {"params": {}})


def test_bad_reference_fails_the_step_clearly() -> None:
    spec = workflow(step("a"), step("b", deps=("a",), inputs={"path": "{{ steps.a.outputs.nope }}", "content": "x"}))
    trace = run(spec)
    b = trace.status.step("b")
    assert b.phase is StepPhase.FAILED and "nope" in (b.error or "")
    assert trace.status.phase is WorkflowPhase.COMPENSATED


def test_inputs_are_checked_against_the_capability_schema() -> None:
    trace = run(workflow(step("a", inputs={"path": "x"})))
    a = trace.status.step("a")
    assert a.phase is StepPhase.FAILED and "'content' is a required property" in (a.error or "")
    assert trace.started == []


# -- running ------------------------------------------------------------------------------------------


def test_independent_branches_start_together() -> None:
    trace = run(
        workflow(
            step("root"),
            step("left", deps=("root",)),
            step("right", deps=("root",)),
            step("join", deps=("left", "right")),
        )
    )
    rounds = {name: rnd for name, _, rnd in trace.started}
    assert rounds["left"] == rounds["right"] > rounds["root"]
    assert rounds["join"] > rounds["left"]
    assert trace.status.phase is WorkflowPhase.SUCCEEDED
    assert trace.status.progress == "4/4"


def test_step_three_of_four_fails_and_two_then_one_are_compensated() -> None:
    spec = workflow(step("s1"), step("s2", deps=("s1",)), step("s3", deps=("s2",)), step("s4", deps=("s3",)))
    trace = run(spec, fail_on("s3"))
    assert trace.compensated == ["s2", "s1"]
    assert trace.status.phase is WorkflowPhase.COMPENSATED
    assert trace.status.reason == Reason.STEP_FAILED
    phases = [s.phase for s in trace.status.steps]
    assert phases == [StepPhase.COMPENSATED, StepPhase.COMPENSATED, StepPhase.FAILED, StepPhase.SKIPPED]
    assert trace.status.step("s3").attempts == 3  # default retry limit 2: three attempts


def test_fails_twice_then_succeeds_on_third_attempt_with_backoff() -> None:
    attempts: list[int] = []

    def outcome(action: saga.RunAction) -> saga.ActionResult:
        attempts.append(action.attempt)
        if action.attempt < 3:
            return saga.ActionResult(action.step, False, action.inputs, error="flaky")
        return succeed(action)

    trace = run(workflow(step("a", retry={"limit": 2, "backoffSeconds": 1, "factor": 2})), outcome)
    assert attempts == [1, 2, 3]
    assert trace.status.phase is WorkflowPhase.SUCCEEDED
    assert trace.status.step("a").attempts == 3


def test_retry_exhaustion_fails_without_compensation_when_nothing_completed() -> None:
    trace = run(workflow(step("a", retry={"limit": 1})), fail_on("a"))
    assert trace.status.phase is WorkflowPhase.FAILED
    assert trace.status.step("a").attempts == 2
    assert "failed after 2 attempts" in (trace.status.message or "")


def test_non_retryable_error_is_not_retried() -> None:
    trace = run(workflow(step("a")), fail_on("a", retryable=False))
    assert trace.status.step("a").attempts == 1


def test_step_timeout_marks_in_doubt_and_compensates_it() -> None:
    def outcome(action: saga.RunAction) -> saga.ActionResult:
        return saga.ActionResult(action.step, False, action.inputs, error="timed out", timed_out=True)

    trace = run(workflow(step("a", retry={"limit": 0}, timeoutSeconds=1)), outcome)
    a = trace.status.step("a")
    assert a.in_doubt and trace.compensated == ["a"]
    assert trace.status.phase is WorkflowPhase.COMPENSATED


def test_workflow_timeout_cancels_and_compensates() -> None:
    spec = workflow(
        step("a"), step("b", capability="sys.sleep", deps=("a",), inputs={"seconds": 100}), timeoutSeconds=5
    )
    status = run(spec, stop_when=lambda t: any(s == "b" for s, _, _ in t.started)).status
    world = saga.World(
        ref=saga.WorkflowRef("wf", "ns", "uid-1"),
        spec=spec,
        status=status,
        capabilities=CAPS,
        policies=[],
        principal=saga.Principal(user="bob"),
        now=saga.parse_time(status.started_at) + saga.timedelta(seconds=6),  # type: ignore[operator]
        in_flight=frozenset({"b"}),
    )
    plan = saga.plan(world)
    assert plan.cancel == ["b"] and plan.status.reason == Reason.TIMEOUT


def test_compensation_failure_ends_compensation_failed_after_retries() -> None:
    spec = workflow(step("s1"), step("s2", deps=("s1",), capability="test.fail", inputs={}))
    trace = run(spec, fail_on("s2"), compensation_ok=lambda name, attempt: False)
    assert trace.status.phase is WorkflowPhase.COMPENSATION_FAILED
    assert trace.compensated == ["s1"] * 4  # first attempt and three retries
    stalled = next(c for c in trace.status.conditions if c.type == "Stalled")
    assert stalled.status == "True"


def test_rollback_of_a_succeeded_workflow() -> None:
    spec = workflow(step("s1"), step("s2", deps=("s1",)))
    done = run(spec)
    assert done.status.phase is WorkflowPhase.SUCCEEDED
    rolled = run(spec.model_copy(update={"rollback": True}), status=done.status)
    assert rolled.compensated == ["s2", "s1"]
    assert rolled.status.phase is WorkflowPhase.COMPENSATED
    assert rolled.status.reason == Reason.ROLLBACK_REQUESTED


def test_conditions_follow_the_phase() -> None:
    trace = run(workflow(step("a")))
    conditions = {c.type: (c.status, c.reason) for c in trace.status.conditions}
    assert conditions["Completed"] == ("True", "Succeeded")
    assert conditions["Ready"] == ("True", "Succeeded")
    assert conditions["Reconciling"][0] == "False"


# -- recovery -----------------------------------------------------------------------------------------


def _running(spec_steps: list[str], capability: str) -> tuple[object, WorkflowStatus]:
    spec = workflow(*[step(n, capability=capability, inputs={"ledger": "l", "entry": n}) for n in spec_steps])
    status = WorkflowStatus(
        phase=WorkflowPhase.RUNNING,
        started_at="2026-01-01T00:00:00Z",
        steps=[StepStatus(name=spec_steps[0], phase=StepPhase.RUNNING, attempts=1, idempotency_key="key-1")],
    )
    return spec, status


def test_idempotent_step_found_running_runs_again_with_the_same_key() -> None:
    spec, status = _running(["a"], "test.ledger.record")
    trace = run(spec, status=status)  # type: ignore[arg-type]
    assert trace.status.phase is WorkflowPhase.SUCCEEDED
    assert trace.status.step("a").idempotency_key == "key-1"
    assert any(e.reason == "Recovered" for e in trace.events)


def test_non_idempotent_step_found_running_is_in_doubt_and_compensated() -> None:
    spec, status = _running(["a"], "test.ledger.append")
    trace = run(spec, status=status)  # type: ignore[arg-type]
    a = trace.status.step("a")
    assert a.in_doubt and a.phase is StepPhase.COMPENSATED
    assert trace.status.reason == Reason.IN_DOUBT
    assert trace.status.phase is WorkflowPhase.COMPENSATED
    assert a.compensation and a.compensation.inputs == {"ledger": "l", "key": "key-1"}


def _running_http(**extra: object) -> tuple[object, WorkflowStatus]:
    inputs = {"method": "POST", "url": "https://api.example/items"}
    undo = {"capability": "net.http.request", "inputs": {"method": "DELETE", "url": "https://api.example/items/1"}}
    spec = workflow(step("a", capability="net.http.request", inputs=inputs, compensation=undo, **extra))
    status = WorkflowStatus(
        phase=WorkflowPhase.RUNNING,
        started_at="2026-01-01T00:00:00Z",
        steps=[StepStatus(name="a", phase=StepPhase.RUNNING, attempts=1, idempotency_key="key-1")],
    )
    return spec, status


def test_http_step_that_says_idempotent_found_running_runs_again_with_the_same_key() -> None:
    spec, status = _running_http(idempotent=True)
    trace = run(spec, status=status)  # type: ignore[arg-type]
    assert trace.status.phase is WorkflowPhase.SUCCEEDED, trace.status
    assert trace.status.step("a").idempotency_key == "key-1" and not trace.status.step("a").in_doubt
    assert any(e.reason == "Recovered" and "Idempotency-Key" in e.message for e in trace.events)


def test_http_step_without_idempotent_found_running_is_in_doubt_with_a_hint() -> None:
    spec, status = _running_http()
    trace = run(spec, status=status)  # type: ignore[arg-type]
    a = trace.status.step("a")
    assert a.in_doubt and trace.status.reason == Reason.IN_DOUBT
    assert "set idempotent: true on the step" in (a.error or "")


def test_idempotent_is_refused_for_capabilities_that_do_not_send_the_key() -> None:
    problems = saga.spec_errors(workflow(step("a", idempotent=True)), CAPS)
    assert problems == [
        "step 'a': idempotent: true needs a capability that sends the Idempotency-Key header "
        "(net.http.request, custom HTTP capabilities); io.fs.write_file does not"
    ]


def test_the_shape_of_each_step_is_checked_before_it_runs() -> None:
    """The admission webhook's checks of a step's shape (not CEL rules on the CRD, which the API server
    would evaluate on every status write)."""
    approval = {"name": "gate", "type": "Approval"}
    cases = {
        "an Action step needs a capability (or set type: Approval for a human gate)": {"name": "a"},
        "an Approval step is a human gate and takes no capability": {**approval, "capability": "io.fs.delete"},
        "an Approval step takes no inputs, retry or compensation (it has inputs)": {**approval, "inputs": {}},
        "an Approval step takes no inputs, retry or compensation (it has compensation, retry)": {
            **approval,
            "retry": {"limit": 1},
            "compensation": {"capability": "io.fs.delete"},
        },
    }
    for message, shape in cases.items():
        assert saga.spec_errors(workflow(shape), CAPS) == [f"step {shape['name']!r}: {message}"], message
    assert saga.spec_errors(workflow(approval, step("a", deps=("gate",))), CAPS) == []
    assert "step 'a' depends on itself" in saga.spec_errors(workflow(step("a", deps=("a",))), CAPS)


# -- governance -----------------------------------------------------------------------------------------


def test_no_policy_means_deny_and_the_step_never_runs() -> None:
    trace = run(workflow(step("a")), policies=[])
    a = trace.status.step("a")
    assert a.phase is StepPhase.FAILED and a.decision == Decision.DENY
    assert trace.status.reason == Reason.POLICY_DENIED
    assert trace.started == []


def test_explicit_approval_step_waits_then_continues() -> None:
    spec = workflow(step("a"), {"name": "gate", "type": "Approval", "dependsOn": ["a"]}, step("b", deps=("gate",)))
    waiting = run(spec)
    assert waiting.status.phase is WorkflowPhase.AWAITING_APPROVAL
    request = waiting.approvals[0]
    assert request.name == "wf.gate" and request.step == "gate"
    approved = {"gate": saga.ApprovalState("wf.gate", ApprovalPhase.APPROVED, decided_by="alice")}
    done = run(spec, status=waiting.status, approvals=approved)
    assert done.status.phase is WorkflowPhase.SUCCEEDED
    assert done.status.step("gate").outputs == {"approvedBy": "alice"}


def test_rejected_approval_compensates() -> None:
    spec = workflow(step("a"), {"name": "gate", "type": "Approval", "dependsOn": ["a"]})
    waiting = run(spec)
    done = run(spec, status=waiting.status, approvals={"gate": saga.ApprovalState("wf.gate", ApprovalPhase.REJECTED)})
    assert done.status.reason == Reason.APPROVAL_REJECTED
    assert done.status.phase is WorkflowPhase.COMPENSATED and done.compensated == ["a"]


def test_gate_listed_after_its_dependent_still_frees_it_in_the_same_plan() -> None:
    spec = workflow(step("b", deps=("gate",)), {"name": "gate", "type": "Approval"})
    waiting = run(spec)
    done = run(spec, status=waiting.status, approvals={"gate": saga.ApprovalState("wf.gate", ApprovalPhase.APPROVED)})
    assert done.status.phase is WorkflowPhase.SUCCEEDED


def test_step_runs_only_if_its_inputs_still_match_the_approved_hash() -> None:
    from controller.api.policy import PolicyObject, PolicySpec, Rule
    from controller.api.workflow import Decision

    ask = [
        PolicyObject(name="ask", spec=PolicySpec(rules=[Rule(capabilities=["*"], action=Decision.REQUIRE_APPROVAL)]))
    ]
    spec = workflow(step("a"))
    waiting = run(spec, policies=ask)
    request = waiting.approvals[0]
    assert request.inputs_hash == saga.inputs_hash({"path": "a.txt", "content": "a"})
    ok = run(
        spec,
        policies=ask,
        status=waiting.status,
        # The policy asks for everything, io.fs.restore (the compensation) too: this Approval covers both.
        approvals={
            "a": saga.ApprovalState(
                request.name, ApprovalPhase.APPROVED, request.inputs_hash, compensation="io.fs.restore"
            )
        },
    )
    assert ok.status.phase is WorkflowPhase.SUCCEEDED
    tampered = run(
        spec,
        policies=ask,
        status=waiting.status,
        approvals={"a": saga.ApprovalState(request.name, ApprovalPhase.APPROVED, "sha256:" + "0" * 64)},
    )
    assert tampered.started == [] and "changed after they were approved" in (tampered.status.step("a").error or "")


def test_secret_looking_inputs_are_redacted_for_approvers() -> None:
    assert saga.redact(
        {"token": "abc", "nested": [{"password": "p", "user": "u"}], "ref": {"secretKeyRef": {"name": "s"}}}
    ) == {"token": "***", "nested": [{"password": "***", "user": "u"}], "ref": {"secretKeyRef": {"name": "s"}}}


def test_a_workflow_without_a_recorded_principal_never_runs() -> None:
    spec = workflow(step("a"))
    world = saga.World(
        ref=saga.WorkflowRef("wf", "ns", "uid"),
        spec=spec,
        status=WorkflowStatus(),
        capabilities=CAPS,
        policies=[],
        principal=saga.Principal(user=""),
        now=saga.datetime.now(saga.UTC),
    )
    plan = saga.plan(world)
    assert plan.actions == [] and plan.status.reason == Reason.UNATTESTED
    assert "no principal attested" in (plan.status.message or "")


def test_a_forked_status_is_equal_and_shares_no_model_with_its_original() -> None:
    """The engine changes the fork's models in place (a step's phase, its compensation's): none of them may
    be the original's, which the runner still holds as the status before the plan."""
    status = WorkflowStatus.model_validate(
        {
            "phase": "Running",
            "steps": [
                {
                    "name": "a",
                    "phase": "Succeeded",
                    "outputs": {"path": "a.txt"},
                    "condition": {"rule": "Policy p rule 1", "when": "true"},
                    "compensation": {"capability": "io.fs.restore", "inputs": {"snapshot": "k"}, "phase": "Pending"},
                },
                {"name": "b"},
            ],
            "conditions": [{"type": "Ready", "status": "False"}],
        }
    )
    fork = status.fork()
    assert fork.model_dump() == status.model_dump()
    assert fork is not status and fork.steps is not status.steps and fork.conditions is not status.conditions
    for mine, theirs in zip(fork.steps, status.steps, strict=True):
        assert mine is not theirs
        assert mine.compensation is None or mine.compensation is not theirs.compensation
        assert mine.condition is None or mine.condition is not theirs.condition
    assert all(m is not t for m, t in zip(fork.conditions, status.conditions, strict=True))
    fork.steps[0].compensation.phase = StepPhase.RUNNING  # type: ignore[union-attr]
    fork.steps[1].phase = StepPhase.RUNNING
    assert status.steps[0].compensation.phase is StepPhase.PENDING  # type: ignore[union-attr]
    assert status.steps[1].phase is StepPhase.PENDING
