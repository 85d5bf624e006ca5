"""The finished label (aifirst.dev/finished) takes a workflow out of the operator's watch. Attacks: hide a
running workflow from the operator with it (it would stall with its saga finalizer, and its namespace with
it), create a workflow that carries it, and a rollback of a finished workflow that is no longer watched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from controller.api.metadata import FINALIZER, FINISHED_LABEL
from controller.api.workflow import WorkflowPhase
from tests.integration.test_saga import wf, workspace, write
from tests.kube import Kube

__all__ = ["workspace"]  # the fixture


def _label(obj: dict[str, Any]) -> str | None:
    return (obj["metadata"].get("labels") or {}).get(FINISHED_LABEL)


def _labelled(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return kube.wait_for("wf", name, namespace, lambda o: _label(o) == "true", what="labelled finished")


def test_a_finished_workflow_is_labelled_and_still_rolls_back(kube: Kube, namespace: str, workspace: Path) -> None:
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "kept.txt").write_text("before")
    kube.apply(wf("done", write("a", "kept.txt")), namespace=namespace, as_="bob")
    obj = _labelled(kube, namespace, "done")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED
    assert FINALIZER not in (obj["metadata"].get("finalizers") or [])
    assert (workspace / "kept.txt").read_text() == "a"
    # Not watched any more, yet a rollback reaches the operator (the webhook drops the label) and its
    # snapshot is still there.
    kube.run("patch", "wf", "done", "-n", namespace, "--type=merge", "-p", '{"spec":{"rollback":true}}', as_="bob")
    obj = kube.wait_for(
        "wf", "done", namespace, lambda o: o["status"]["phase"] == WorkflowPhase.COMPENSATED, what="rolled back"
    )
    assert (workspace / "kept.txt").read_text() == "before"
    assert _label(_labelled(kube, namespace, "done")) == "true"  # finished again, for good


def test_the_finished_label_cannot_hide_a_running_workflow(kube: Kube, namespace: str) -> None:
    kube.apply(wf("held", {"name": "gate", "type": "Approval"}), namespace=namespace, as_="bob")
    kube.wait_for(
        "wf", "held", namespace, lambda o: o.get("status", {}).get("phase") == WorkflowPhase.AWAITING_APPROVAL
    )
    for who in ("bob", "admin"):
        result = kube.run("label", "wf", "held", "-n", namespace, f"{FINISHED_LABEL}=true", as_=who, check=False)
        assert result.returncode != 0 and FINISHED_LABEL in result.stderr and "running" in result.stderr, result.stderr
    patch = json.dumps({"metadata": {"labels": {FINISHED_LABEL: "true"}, "finalizers": None}})
    result = kube.run("patch", "wf", "held", "-n", namespace, "--type=merge", "-p", patch, check=False)
    assert result.returncode != 0, "the finalizer and the label came off a running workflow"
    assert _label(kube.get("wf", "held", namespace)) is None


def test_a_workflow_created_with_the_finished_label_is_watched_and_runs(kube: Kube, namespace: str) -> None:
    manifest = wf("sneaky", {"name": "gate", "type": "Approval"})
    manifest["metadata"]["labels"] = {FINISHED_LABEL: "true"}
    kube.apply(manifest, namespace=namespace, as_="bob")
    obj = kube.wait_for(
        "wf", "sneaky", namespace, lambda o: o.get("status", {}).get("phase") == WorkflowPhase.AWAITING_APPROVAL
    )
    assert _label(obj) is None  # dropped at creation: the operator saw it and runs it


def test_a_finished_workflow_without_the_label_gets_it(kube: Kube, namespace: str) -> None:
    """As after an upgrade from an operator that did not label them, or after someone removed it: removing
    it is allowed (the workflow is watched again), and the operator labels it again."""
    kube.apply(wf("old", {"name": "s", "capability": "sys.sleep", "inputs": {"seconds": 0}}), namespace=namespace)
    _labelled(kube, namespace, "old")
    kube.run("label", "wf", "old", "-n", namespace, f"{FINISHED_LABEL}-", as_="bob")
    _labelled(kube, namespace, "old")
