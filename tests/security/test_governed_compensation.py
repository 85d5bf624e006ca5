"""Compensation is governed like any forward step (issue 11, item 1): a policy decision for the workflow's
principal and the compensation capability's input schema, at the time it runs; a step whose undo would
be denied never runs; an undo that needs approval is asked for (and covered) by the step's Approval.
Real API server, real operator process."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from controller.api.approval import ApprovalPhase
from controller.api.workflow import Decision, Reason, StepPhase, WorkflowPhase
from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_governance import decide, policy, wait_phase
from tests.integration.test_saga import steps_of, wait_terminal, wf, write
from tests.kube import Kube

UNDO_BY_DELETE = {"capability": "io.fs.delete", "inputs": {"path": "{{ outputs.path }}"}}


@pytest.fixture
def workspace(operator: DevEnvironment, namespace: str) -> Path:
    return operator.workspaces / namespace


def failing(name: str, *deps: str) -> dict[str, Any]:
    return {"name": name, "capability": "test.fail", "dependsOn": list(deps), "retry": {"limit": 0}}


def gate(name: str, *deps: str) -> dict[str, Any]:
    return {"name": name, "type": "Approval", "dependsOn": list(deps)}


def deny_deletes(kube: Kube, namespace: str) -> None:
    kube.apply(policy("no-deletes", {"capabilities": ["io.fs.delete"], "action": "DENY"}), namespace=namespace)
    time.sleep(0.5)  # the operator's policy index follows the watch


def test_compensation_denied_by_policy_refuses_its_step_before_it_runs(
    kube: Kube, namespace: str, workspace: Path
) -> None:
    deny_deletes(kube, namespace)
    kube.apply(
        wf("undo-denied", write("a", "a.txt", compensation=UNDO_BY_DELETE), failing("b", "a")),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_terminal(kube, namespace, "undo-denied")
    a = steps_of(obj)["a"]
    assert obj["status"]["reason"] == Reason.POLICY_DENIED, obj["status"]
    assert a["phase"] == StepPhase.FAILED and a["decision"] == Decision.DENY and a.get("attempts", 0) == 0
    assert "its compensation io.fs.delete" in a["error"] and "no-deletes rule 0: DENY" in a["error"]
    assert not (workspace / "a.txt").exists()


def test_compensation_denied_after_its_step_ran_never_runs(kube: Kube, namespace: str, workspace: Path) -> None:
    kube.apply(
        wf("denied-later", write("a", "a.txt", compensation=UNDO_BY_DELETE), gate("gate", "a"), failing("b", "gate")),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_phase(kube, namespace, "denied-later", WorkflowPhase.AWAITING_APPROVAL)
    assert (workspace / "a.txt").read_text() == "a"
    deny_deletes(kube, namespace)  # the policy changes between the step and its compensation
    assert decide(kube, namespace, steps_of(obj)["gate"]["approval"], ApprovalPhase.APPROVED, "alice")[0] == 0
    obj = wait_terminal(kube, namespace, "denied-later")
    status, a = obj["status"], steps_of(obj)["a"]
    assert status["phase"] == WorkflowPhase.COMPENSATION_FAILED, status
    assert (
        a["compensation"]["phase"] == StepPhase.COMPENSATION_FAILED and a["compensation"]["decision"] == Decision.DENY
    )
    assert "compensation io.fs.delete denied by policy" in a["compensation"]["error"]
    assert a["compensation"].get("attempts", 0) == 0
    assert (workspace / "a.txt").read_text() == "a"  # the delete never ran
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True"


def test_compensation_denied_at_rollback_never_runs(kube: Kube, namespace: str, workspace: Path) -> None:
    kube.apply(wf("rolled", write("a", "a.txt", compensation=UNDO_BY_DELETE)), namespace=namespace, as_="bob")
    assert wait_terminal(kube, namespace, "rolled")["status"]["phase"] == WorkflowPhase.SUCCEEDED
    deny_deletes(kube, namespace)
    kube.run("patch", "wf", "rolled", "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {"rollback": True}}))
    obj = kube.wait_for(
        "wf",
        "rolled",
        namespace,
        lambda o: (
            o["status"].get("reason") == Reason.ROLLBACK_REQUESTED
            and o["status"]["phase"] == WorkflowPhase.COMPENSATION_FAILED
        ),
        what="a refused rollback",
    )
    assert "compensation io.fs.delete denied by policy" in steps_of(obj)["a"]["compensation"]["error"]
    assert (workspace / "a.txt").read_text() == "a"


def test_compensation_inputs_that_fail_its_schema_never_run(kube: Kube, namespace: str, workspace: Path) -> None:
    bad_undo = {"capability": "io.fs.delete", "inputs": {"path": "{{ outputs.path }}", "recursive": True}}
    kube.apply(
        wf("bad-undo", write("a", "a.txt", compensation=bad_undo), failing("b", "a")), namespace=namespace, as_="bob"
    )
    obj = wait_terminal(kube, namespace, "bad-undo")
    compensation = steps_of(obj)["a"]["compensation"]
    assert obj["status"]["phase"] == WorkflowPhase.COMPENSATION_FAILED, obj["status"]
    assert "compensation inputs do not match io.fs.delete" in compensation["error"]
    assert "'recursive' was unexpected" in compensation["error"]
    assert (workspace / "a.txt").read_text() == "a"


def test_compensation_that_needs_approval_is_asked_for_by_its_steps_approval(
    kube: Kube, namespace: str, workspace: Path
) -> None:
    kube.apply(
        policy("ask-deletes", {"capabilities": ["io.fs.delete"], "action": "REQUIRE_APPROVAL"}), namespace=namespace
    )
    time.sleep(0.5)
    kube.apply(
        wf("undo-asked", write("a", "a.txt", compensation=UNDO_BY_DELETE), failing("b", "a")),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_phase(kube, namespace, "undo-asked", WorkflowPhase.AWAITING_APPROVAL)
    assert not (workspace / "a.txt").exists()  # the step waits: its undo needs a person
    name = steps_of(obj)["a"]["approval"]
    approval = kube.get("approval", name, namespace)
    assert approval["spec"]["capability"] == "io.fs.write_file"
    assert approval["spec"]["compensation"] == {"capability": "io.fs.delete", "riskLevel": "MEDIUM"}
    assert "also approves its compensation io.fs.delete" in approval["spec"]["message"]
    assert decide(kube, namespace, name, ApprovalPhase.APPROVED, "alice")[0] == 0
    obj = wait_terminal(kube, namespace, "undo-asked")
    a = steps_of(obj)["a"]
    assert obj["status"]["phase"] == WorkflowPhase.COMPENSATED, obj["status"]
    assert a["compensation"]["approved"] is True and a["compensation"]["decision"] == Decision.REQUIRE_APPROVAL
    assert not (workspace / "a.txt").exists()
