"""Attacks on k8s.* targets: a name or namespace that is not one object's (an empty name addresses the
whole collection, `x/scale` a subresource, `..` another namespace's path)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.api.workflow import WorkflowPhase
from controller.capabilities.base import CapabilityError
from controller.capabilities.handlers import k8s
from controller.capabilities.registry import load
from controller.engine.schema import validate_inputs
from tests.integration.test_saga import steps_of, wait_terminal, wf
from tests.kube import Kube

PATCH = {"data": {"owned": "yes"}}


def _patch(name: str, namespace: str | None = None) -> dict[str, Any]:
    inputs: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "patch": PATCH}
    if namespace is not None:
        inputs["namespace"] = namespace
    return {"name": "target", "capability": "k8s.patch", "retry": {"limit": 0}, "inputs": inputs}


def _apply(name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace is not None else {})}
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"owned": "yes"}}
    return {"name": "target", "capability": "k8s.apply", "retry": {"limit": 0}, "inputs": {"manifest": manifest}}


CASES = {
    "empty-name-patches-the-collection": (_patch(""), "name"),
    "subresource-in-name": (_patch("victim/scale"), "name"),
    "dotdot-namespace": (_patch("victim", "../kube-system"), "namespace"),
    "encoded-slash-in-name": (_patch("victim%2Fstatus"), "name"),
    "apply-manifest-subresource-name": (_apply("victim/status"), "metadata.name"),
    "apply-manifest-dotdot-namespace": (_apply("victim", "x/../../kube-system"), "metadata.namespace"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_k8s_target_tricks_reach_another_path(kube: Kube, namespace: str, operator: object, case: str) -> None:
    step, field = CASES[case]
    kube.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "victim"}, "data": {"a": "b"}},
        namespace=namespace,
    )
    before = kube.get("configmap", "victim", namespace)
    kube.apply(wf("trick", step), namespace=namespace)
    obj = wait_terminal(kube, namespace, "trick")
    assert obj["status"]["phase"] == WorkflowPhase.FAILED, obj["status"]
    error = steps_of(obj)["target"]["error"]
    assert error.startswith("inputs do not match"), error  # refused before anything was sent
    assert f"{field}:" in error, error
    after = kube.get("configmap", "victim", namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # nothing touched


@pytest.mark.parametrize(
    ("api_version", "kind", "name", "namespace"),
    [
        ("v1", "ConfigMap", "", None),
        ("v1", "ConfigMap", "x/scale", None),
        ("v1", "ConfigMap", "..", None),
        ("v1", "ConfigMap", "x%2Fy", None),
        ("v1", "ConfigMap", "x", "../kube-system"),
        ("v1", "ConfigMap/x", "x", None),
        ("../v1", "ConfigMap", "x", None),
        ("", "ConfigMap", "x", None),
    ],
)
def test_k8s_target_tricks_are_refused_by_the_handler_too(
    api_version: str, kind: str, name: str, namespace: str | None
) -> None:
    """The handler checks what the schema checks (inputs that reach it another way, such as a
    compensation's), with a clear, non-retryable error; and the two agree."""
    with pytest.raises(CapabilityError) as error:
        k8s.check_target(api_version, kind, name, namespace)
    assert not error.value.retryable
    spec = load().get("k8s.delete")
    inputs = {"apiVersion": api_version, "kind": kind, "name": name, **({"namespace": namespace} if namespace else {})}
    assert validate_inputs(spec.inputs, inputs)


@pytest.mark.parametrize(
    ("api_version", "kind", "name", "namespace"),
    [
        ("v1", "ConfigMap", "settings", "team-a"),
        ("apps/v1", "Deployment", "web.v2", None),
        ("rbac.authorization.k8s.io/v1", "ClusterRole", "system:aggregate-to-edit", None),
        ("aifirst.dev/v1alpha1", "Workflow", "deploy-web", "agents"),
    ],
)
def test_k8s_valid_targets_still_pass(api_version: str, kind: str, name: str, namespace: str | None) -> None:
    k8s.check_target(api_version, kind, name, namespace)
    spec = load().get("k8s.delete")
    inputs = {"apiVersion": api_version, "kind": kind, "name": name, **({"namespace": namespace} if namespace else {})}
    assert validate_inputs(spec.inputs, inputs) == []


def test_k8s_patch_claims_idempotency_a_json_patch_append_lacks() -> None:
    # `add /data/-` appends again when repeated: a k8s.patch found running after a restart is in doubt.
    assert load().get("k8s.patch").idempotent is False
