"""The pure engine governs compensations like forward steps; Approval names and idempotency keys never
collide. No cluster: the simulation drives saga.plan as the operator does."""

from __future__ import annotations

from typing import Any

from controller.api.approval import ApprovalPhase
from controller.api.capability import RiskLevel
from controller.api.policy import PolicyObject, PolicySpec
from controller.api.workflow import Decision, Reason, StepPhase, WorkflowPhase
from controller.engine import saga
from tests.unit.simulation import run, step, workflow
from tests.unit.test_engine import fail_on


def policies(*rules: dict[str, Any], default: str = "ALLOW") -> list[PolicyObject]:
    return [
        PolicyObject(name="p", namespace="ns", spec=PolicySpec.model_validate({"default": default, "rules": rules}))
    ]


ALLOW = policies()
DENY_DELETE = policies({"capabilities": ["io.fs.delete"], "action": "DENY"})
ASK_DELETE = policies({"capabilities": ["io.fs.delete"], "action": "REQUIRE_APPROVAL"})


def undone_by_delete(name: str, deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    compensation = extra.pop("compensation", {"capability": "io.fs.delete", "inputs": {"path": "{{ outputs.path }}"}})
    return step(name, deps=deps, compensation=compensation, **extra)


def failing(name: str, deps: tuple[str, ...]) -> dict[str, Any]:
    return step(name, "test.fail", deps=deps, retry={"limit": 0})


def test_a_step_whose_compensation_is_denied_never_runs() -> None:
    trace = run(workflow(undone_by_delete("a")), policies=DENY_DELETE)
    a = trace.status.step("a")
    assert trace.started == []
    assert a.phase is StepPhase.FAILED and a.decision is Decision.DENY
    assert trace.status.reason == Reason.POLICY_DENIED
    assert "its compensation io.fs.delete" in (a.error or "") and "Policy ns/p rule 0: DENY" in (a.error or "")


def test_a_compensation_denied_after_its_step_ran_does_not_run() -> None:
    spec = workflow(undone_by_delete("a"), failing("b", ("a",)))
    ran = run(spec, fail_on("b"), policies=ALLOW, stop_when=lambda t: t.status.step("a").phase is StepPhase.SUCCEEDED)
    done = run(spec, fail_on("b"), policies=DENY_DELETE, status=ran.status)  # the policy changed meanwhile
    a = done.status.step("a")
    assert done.compensated == []
    assert done.status.phase is WorkflowPhase.COMPENSATION_FAILED
    assert a.compensation is not None and a.compensation.phase is StepPhase.COMPENSATION_FAILED
    assert a.compensation.decision is Decision.DENY
    assert "compensation io.fs.delete denied by policy: Policy ns/p rule 0: DENY" in (a.compensation.error or "")


def test_rollback_is_governed_too() -> None:
    spec = workflow(undone_by_delete("a"))
    succeeded = run(spec, policies=ALLOW)
    assert succeeded.status.phase is WorkflowPhase.SUCCEEDED
    rolled = run(workflow(undone_by_delete("a"), rollback=True), policies=DENY_DELETE, status=succeeded.status)
    assert rolled.compensated == [] and rolled.status.phase is WorkflowPhase.COMPENSATION_FAILED
    assert rolled.status.reason == Reason.ROLLBACK_REQUESTED


def test_a_compensation_whose_inputs_fail_its_schema_does_not_run() -> None:
    a_step = undone_by_delete("a", compensation={"capability": "io.fs.delete", "inputs": {"file": "x"}})
    succeeded = run(workflow(a_step), policies=ALLOW)
    rolled = run(workflow(a_step, rollback=True), policies=ALLOW, status=succeeded.status)
    a = rolled.status.step("a")
    assert rolled.compensated == [] and rolled.status.phase is WorkflowPhase.COMPENSATION_FAILED
    assert a.compensation is not None
    assert "compensation inputs do not match io.fs.delete" in (a.compensation.error or "")
    assert "'path' is a required property" in (a.compensation.error or "")


def test_a_compensation_that_needs_approval_is_asked_for_and_covered_by_the_steps_approval() -> None:
    spec = workflow(undone_by_delete("a"), failing("b", ("a",)))
    waiting = run(spec, fail_on("b"), policies=ASK_DELETE)
    assert waiting.started == [] and waiting.status.step("a").decision is Decision.REQUIRE_APPROVAL
    request = waiting.approvals[0]
    assert request.compensation == saga.CoveredCompensation("io.fs.delete", RiskLevel.MEDIUM)
    assert "also approves its compensation io.fs.delete (MEDIUM risk)" in request.message
    approved = saga.ApprovalState(
        request.name, ApprovalPhase.APPROVED, request.inputs_hash, compensation="io.fs.delete"
    )
    done = run(spec, fail_on("b"), policies=ASK_DELETE, status=waiting.status, approvals={"a": approved})
    a = done.status.step("a")
    assert a.compensation is not None and a.compensation.approved is True
    assert done.compensated == ["a"] and done.status.phase is WorkflowPhase.COMPENSATED


def test_a_compensation_needing_approval_that_nobody_gave_does_not_run() -> None:
    spec = workflow(undone_by_delete("a"), failing("b", ("a",)))
    ran = run(spec, fail_on("b"), policies=ALLOW, stop_when=lambda t: t.status.step("a").phase is StepPhase.SUCCEEDED)
    done = run(spec, fail_on("b"), policies=ASK_DELETE, status=ran.status)
    a = done.status.step("a")
    assert done.compensated == [] and done.status.phase is WorkflowPhase.COMPENSATION_FAILED
    assert a.compensation is not None and "did not cover it" in (a.compensation.error or "")


def test_an_approval_asked_before_the_compensation_needed_one_does_not_cover_it() -> None:
    spec = workflow(undone_by_delete("a"))
    ask_write = policies({"capabilities": ["io.fs.write_file"], "action": "REQUIRE_APPROVAL"})
    waiting = run(spec, policies=ask_write)
    request = waiting.approvals[0]
    assert request.compensation is None
    approved = saga.ApprovalState(request.name, ApprovalPhase.APPROVED, request.inputs_hash)
    both = [*ask_write, *ASK_DELETE]
    done = run(spec, policies=both, status=waiting.status, approvals={"a": approved})
    assert done.started == []
    assert "did not cover the compensation io.fs.delete" in (done.status.step("a").error or "")


def test_approvers_of_a_step_and_its_compensation_are_the_people_both_rules_name() -> None:
    def asking(capability: str, *groups: str) -> dict[str, Any]:
        return {"capabilities": [capability], "action": "REQUIRE_APPROVAL", "approvers": {"groups": list(groups)}}

    spec = workflow(undone_by_delete("a"))
    both = run(spec, policies=policies(asking("io.fs.write_file", "dev", "sre"), asking("io.fs.delete", "sre")))
    approvers = both.approvals[0].approvers
    assert approvers is not None and approvers.groups == ["sre"]
    nobody = run(spec, policies=policies(asking("io.fs.write_file", "dev"), asking("io.fs.delete", "sre")))
    assert nobody.approvals == [] and nobody.started == []
    assert "nobody could approve the step" in (nobody.status.step("a").error or "")


def test_an_interrupted_compensation_is_decided_again_before_it_reruns() -> None:
    spec = workflow(undone_by_delete("a"), failing("b", ("a",)))
    compensating = run(
        spec,
        fail_on("b"),
        policies=ALLOW,
        stop_when=lambda t: t.status.step("a").phase is StepPhase.COMPENSATING,
    )
    # The operator restarts while the compensation runs, and meanwhile the policy denies it.
    done = run(spec, policies=DENY_DELETE, status=compensating.status)
    assert done.compensated == [] and done.status.phase is WorkflowPhase.COMPENSATION_FAILED


# -- names and keys -----------------------------------------------------------------------------------


def test_approval_names_of_different_workflow_step_pairs_differ() -> None:
    def name(workflow_name: str, step_name: str) -> str:
        return saga.approval_name(saga.WorkflowRef(workflow_name, "ns", "uid"), step_name)

    assert name("deploy", "prod-db") == "deploy.prod-db"
    assert name("deploy-prod", "db") == "deploy-prod.db"
    assert name("deploy", "Prod_DB") != name("deploy", "prod-db")
    assert name("deploy", "Prod_DB").startswith("deploy.prod-db-")
    pairs = [("a", "b-c"), ("a-b", "c"), ("a.b", "c"), ("a", "B_c"), ("a", "b_c"), ("a", "b-c_")]
    assert len({name(w, s) for w, s in pairs}) == len(pairs)
    long = [name("w" * 250, s) for s in ("x", "y", "X")]
    assert len(set(long)) == 3 and all(len(n) <= 253 for n in long)


def test_two_steps_that_would_share_an_approval_are_refused() -> None:
    clash = saga.approval_name(saga.WorkflowRef("wf", "ns", "uid"), "Prod_DB").removeprefix("wf.")
    errors = saga.spec_errors(workflow(step("Prod_DB"), step(clash)), {})
    assert f"steps 'Prod_DB' and '{clash}' would share one Approval" in "; ".join(errors)


def test_idempotency_keys_are_bounded_and_distinct_for_long_names() -> None:
    ref = saga.WorkflowRef("w" * 253, "n" * 63, "uid-1")
    steps = ["s" * 62 + c for c in "ab"]
    keys = {saga.idempotency_key(ref, s, purpose) for s in steps for purpose in ("action", "compensation")}
    keys.add(saga.idempotency_key(saga.WorkflowRef("w" * 253, "n" * 63, "uid-2"), steps[0]))
    assert len(keys) == 5
    assert {len(k) for k in keys} == {saga.KEY_PREFIX_CHARS + 65}
    assert all(k.isascii() and " " not in k for k in keys)  # a valid HTTP header value and file name
    assert saga.idempotency_key(ref, steps[0]) == saga.idempotency_key(ref, steps[0])  # stable across restarts
