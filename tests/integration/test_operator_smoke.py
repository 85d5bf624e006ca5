"""The operator, in its own process under its own identity, notices new workflows."""

from __future__ import annotations

from controller.api.workflow import StepPhase, WorkflowPhase
from tests.integration.test_crds import valid_workflow
from tests.kube import Kube


def test_new_workflow_is_recorded(kube: Kube, namespace: str, operator: object) -> None:
    """bob may write files (the baseline policies), so the first step runs and the gate waits for a person."""
    kube.apply(valid_workflow(), namespace=namespace, as_="bob")
    wf = kube.wait_for(
        "wf",
        "demo",
        namespace,
        lambda o: o.get("status", {}).get("phase") not in (None, WorkflowPhase.PENDING, WorkflowPhase.RUNNING),
        what="the workflow past Running",
    )
    assert wf["status"]["phase"] == WorkflowPhase.AWAITING_APPROVAL, wf["status"]
    assert wf["status"]["observedGeneration"] == wf["metadata"]["generation"]
    phases = {s["name"]: s["phase"] for s in wf["status"]["steps"]}
    assert phases == {"create_database": StepPhase.SUCCEEDED, "approval_gate": StepPhase.AWAITING_APPROVAL}
    assert list(phases) == ["create_database", "approval_gate"]
