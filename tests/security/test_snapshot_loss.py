"""Attacks on the snapshots compensations restore from: a lost snapshot reported as compensated, a
Secret's data left in clear on disk, snapshots that outlive their workflow."""

from __future__ import annotations

import base64
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from controller.api.workflow import StepPhase, WorkflowPhase
from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_saga import steps_of, wait_terminal, wf, write
from tests.kube import Kube


def _configmap_step(name: str) -> dict[str, Any]:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"mode": "fast"}}
    return {"name": "apply", "capability": "k8s.apply", "inputs": {"manifest": manifest}}


def _rollback(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    kube.run("patch", "wf", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"rollback":true}}')
    return kube.wait_for(
        "wf",
        name,
        namespace,
        lambda o: o["status"]["phase"] in (WorkflowPhase.COMPENSATED, WorkflowPhase.COMPENSATION_FAILED),
        what="compensation finished",
    )


def _snapshots_of(operator: DevEnvironment, namespace: str, uid: str) -> list[Path]:
    reserved = operator.workspaces / namespace / ".airun"
    return [p for p in (reserved / "snapshots" / uid, reserved / "k8s-snapshots" / uid) if p.exists()]


def _wait_until(condition: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.parametrize("family", ["io.fs", "k8s"])
def test_snapshot_lost_before_compensation_reports_compensated(
    kube: Kube, namespace: str, operator: DevEnvironment, family: str
) -> None:
    step = write("apply", "a.txt") if family == "io.fs" else _configmap_step("settings")
    kube.apply(wf("lost", step), namespace=namespace)
    obj = wait_terminal(kube, namespace, "lost")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, obj["status"]
    reserved = operator.workspaces / namespace / ".airun"
    assert any(p.is_file() for p in reserved.rglob("*")), "the forward step wrote no snapshot"
    shutil.rmtree(reserved)  # the volume was replaced, someone cleaned up: the snapshot is gone
    obj = _rollback(kube, namespace, "lost")
    assert obj["status"]["phase"] == WorkflowPhase.COMPENSATION_FAILED, obj["status"]
    compensation = steps_of(obj)["apply"]["compensation"]
    assert compensation["phase"] == StepPhase.COMPENSATION_FAILED and "missing" in compensation["error"]
    assert any(c["type"] == "Stalled" and c["status"] == "True" for c in obj["status"]["conditions"])


def test_secret_snapshot_stored_in_clear(kube: Kube, namespace: str, operator: DevEnvironment) -> None:
    old = f"old-password-{uuid.uuid4().hex}"
    secret: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}}
    kube.apply({**secret, "stringData": {"password": old}}, namespace=namespace)
    manifest = {**secret, "stringData": {"password": "new-password"}}
    kube.apply(
        wf("rotate", {"name": "apply", "capability": "k8s.apply", "inputs": {"manifest": manifest}}),
        namespace=namespace,
    )
    obj = wait_terminal(kube, namespace, "rotate")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, obj["status"]
    files = [p for p in (operator.workspaces / namespace).rglob("*") if p.is_file()]
    assert files
    encoded = base64.b64encode(old.encode())
    for path in files:
        content = path.read_bytes()
        assert old.encode() not in content and encoded not in content, f"{path} holds the Secret in clear"
    [folder] = _snapshots_of(operator, namespace, obj["metadata"]["uid"])
    [snapshot] = folder.glob("*.json")
    assert "sealed" in json.loads(snapshot.read_text())
    # Sealed, not lost: the rollback still puts the old value back.
    assert _rollback(kube, namespace, "rotate")["status"]["phase"] == WorkflowPhase.COMPENSATED
    data = kube.get("secret", "creds", namespace)["data"]
    assert base64.b64decode(data["password"]).decode() == old


def test_snapshots_outlive_their_workflow(kube: Kube, namespace: str, operator: DevEnvironment) -> None:
    kube.apply(wf("done", write("a", "a.txt"), _configmap_step("leftover")), namespace=namespace)
    obj = wait_terminal(kube, namespace, "done")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, obj["status"]
    assert obj["metadata"]["uid"]
    reserved = operator.workspaces / namespace / ".airun"
    assert any(p.is_file() for p in reserved.rglob("*"))
    kube.run("delete", "wf", "done", "-n", namespace, "--wait=true", "--timeout=30s")
    _wait_until(lambda: not any(p.is_file() for p in reserved.rglob("*")), "the deleted workflow's snapshots to go")

    # Deleted while the operator was down: the sweep at start-up collects them; a live workflow keeps its.
    kube.apply(wf("kept", write("a", "b.txt")), namespace=namespace)
    live = wait_terminal(kube, namespace, "kept")["metadata"]["uid"]
    orphan = operator.workspaces / namespace / ".airun" / "snapshots" / str(uuid.uuid4()) / "key"
    operator.stop_operator()
    try:
        orphan.mkdir(parents=True)
        (orphan / "record.json").write_text("{}")
    finally:
        operator.start_operator()
    _wait_until(lambda: not orphan.parent.exists(), "the orphaned snapshots to be swept")
    assert _snapshots_of(operator, namespace, live)
