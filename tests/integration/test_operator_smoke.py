"""The operator, in its own process under its own identity, notices new workflows."""

from __future__ import annotations

from tests.integration.test_crds import valid_workflow
from tests.kube import Kube


def test_new_workflow_is_recorded(kube: Kube, namespace: str, operator: object) -> None:
    kube.apply(valid_workflow(), namespace=namespace, as_="bob")
    wf = kube.wait_for("wf", "demo", namespace, lambda o: bool(o.get("status", {}).get("phase")), what="status.phase")
    assert wf["status"]["phase"] in {
        "Pending",
        "Running",
        "AwaitingApproval",
        "Succeeded",
        "Failed",
        "Compensating",
        "Compensated",
        "CompensationFailed",
    }
    assert wf["status"]["observedGeneration"] == wf["metadata"]["generation"]
    assert [s["name"] for s in wf["status"]["steps"]] == ["create_database", "approval_gate"]
