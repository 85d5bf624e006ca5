"""Approval names never collide, and the operator never deletes an Approval that belongs to another
workflow (issue 11, item 2). Real API server, real operator process."""

from __future__ import annotations

import time

from controller.api.approval import ApprovalPhase
from controller.api.workflow import WorkflowPhase
from tests.integration.test_governance import decide, wait_phase
from tests.integration.test_saga import steps_of, wait_terminal, wf
from tests.kube import Kube


def gate(name: str) -> dict[str, str]:
    return {"name": name, "type": "Approval"}


def test_approval_name_collision_between_workflows_keeps_both_approvals(
    kube: Kube, namespace: str, operator: object
) -> None:
    # `deploy` + `prod-db` and `deploy-prod` + `db` both used to be deploy-prod-db: the second workflow
    # deleted the first one's Approval, which then waited forever.
    kube.apply(wf("deploy", gate("prod-db")), namespace=namespace, as_="bob")
    first = wait_phase(kube, namespace, "deploy", WorkflowPhase.AWAITING_APPROVAL)
    kube.apply(wf("deploy-prod", gate("db")), namespace=namespace, as_="bob")
    second = wait_phase(kube, namespace, "deploy-prod", WorkflowPhase.AWAITING_APPROVAL)
    names = steps_of(first)["prod-db"]["approval"], steps_of(second)["db"]["approval"]
    assert names == ("deploy.prod-db", "deploy-prod.db")
    time.sleep(1)  # whatever the second workflow did to the first one's Approval has happened by now
    for obj, name in zip((first, second), names, strict=True):
        approval = kube.get("approval", name, namespace)
        assert approval["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
        assert decide(kube, namespace, name, ApprovalPhase.APPROVED, "alice")[0] == 0
    assert wait_terminal(kube, namespace, "deploy")["status"]["phase"] == WorkflowPhase.SUCCEEDED
    assert wait_terminal(kube, namespace, "deploy-prod")["status"]["phase"] == WorkflowPhase.SUCCEEDED


def test_approval_of_another_workflow_is_never_deleted(kube: Kube, namespace: str, operator: object) -> None:
    kube.apply(wf("owner", gate("gate")), namespace=namespace, as_="bob")
    owner = wait_phase(kube, namespace, "owner", WorkflowPhase.AWAITING_APPROVAL)
    # An Approval of a live workflow under the name that workflow `squatted` will want for its step.
    kube.apply(
        {
            "apiVersion": "aifirst.dev/v1alpha1",
            "kind": "Approval",
            "metadata": {
                "name": "squatted.gate",
                "ownerReferences": [
                    {
                        "apiVersion": "aifirst.dev/v1alpha1",
                        "kind": "Workflow",
                        "name": "owner",
                        "uid": owner["metadata"]["uid"],
                    }
                ],
            },
            "spec": {"workflow": "owner", "step": "gate", "requestedBy": "bob"},
        },
        namespace=namespace,
    )
    kube.apply(wf("squatted", gate("gate")), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "squatted")
    assert obj["status"]["phase"] == WorkflowPhase.FAILED, obj["status"]
    error = steps_of(obj)["gate"]["error"]
    assert "approval squatted.gate already exists and belongs to workflow owner" in error
    kept = kube.get("approval", "squatted.gate", namespace)
    assert kept["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
