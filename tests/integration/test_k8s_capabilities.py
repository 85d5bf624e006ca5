"""k8s.* capabilities against the real API server, as the workflow's principal (impersonation)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from controller.api.workflow import WorkflowPhase
from tests.integration.test_saga import steps_of, wait_terminal, wf
from tests.kube import Kube

NS = "agents"  # the agent may author workflows only here


@pytest.fixture(scope="module")
def agent_may_edit_configmaps(kube: Kube) -> None:
    """RBAC for the agent on ConfigMaps in its own namespace only."""
    kube.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "configmap-editor", "namespace": NS},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                }
            ],
        }
    )
    kube.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "planner-configmaps", "namespace": NS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-editor"},
            "subjects": [{"kind": "ServiceAccount", "name": "planner", "namespace": NS}],
        }
    )


def configmap(name: str, namespace: str | None = None, **data: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def fail_step(*deps: str) -> dict[str, Any]:
    return {"name": "boom", "capability": "test.fail", "dependsOn": list(deps), "retry": {"limit": 0}}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_apply_as_the_principal_and_compensate_by_deleting(
    kube: Kube, operator: object, agent_may_edit_configmaps: None
) -> None:
    name, cm = unique("k8s-apply"), unique("settings")
    kube.apply(
        wf(
            name,
            {"name": "apply", "capability": "k8s.apply", "inputs": {"manifest": configmap(cm, mode="fast")}},
            {
                "name": "read",
                "capability": "k8s.get",
                "dependsOn": ["apply"],
                "inputs": {"apiVersion": "v1", "kind": "ConfigMap", "name": cm},
            },
            fail_step("read"),
        ),
        namespace=NS,
        as_="agent",
    )
    obj = wait_terminal(kube, NS, name)
    assert obj["status"]["phase"] == WorkflowPhase.COMPENSATED, obj["status"]
    s = steps_of(obj)
    assert s["apply"]["outputs"]["created"] is True and s["apply"]["outputs"]["namespace"] == NS
    assert s["read"]["outputs"]["object"]["data"] == {"mode": "fast"}
    assert kube.run("get", "configmap", cm, "-n", NS, check=False).returncode != 0  # deleted again


def test_patch_is_undone_by_restoring_the_previous_object(
    kube: Kube, operator: object, agent_may_edit_configmaps: None
) -> None:
    name, cm = unique("k8s-patch"), unique("limits")
    kube.apply(configmap(cm, NS, replicas="2"))
    kube.apply(
        wf(
            name,
            {
                "name": "scale",
                "capability": "k8s.patch",
                "inputs": {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": cm,
                    "patch": {"data": {"replicas": "5", "extra": "yes"}},
                },
            },
            fail_step("scale"),
        ),
        namespace=NS,
        as_="agent",
    )
    obj = wait_terminal(kube, NS, name)
    assert obj["status"]["phase"] == WorkflowPhase.COMPENSATED, obj["status"]
    data = kube.get("configmap", cm, NS)["data"]
    assert data == {"replicas": "2"}


def test_missing_permission_is_a_clear_step_error(
    kube: Kube, operator: object, agent_may_edit_configmaps: None
) -> None:
    name = unique("k8s-forbidden")
    kube.apply(
        wf(
            name,
            {
                "name": "escape",
                "capability": "k8s.apply",
                "retry": {"limit": 0},
                "inputs": {"manifest": configmap(unique("x"), "default", a="b")},
            },
        ),
        namespace=NS,
        as_="agent",
    )
    obj = wait_terminal(kube, NS, name)
    assert obj["status"]["phase"] == WorkflowPhase.FAILED
    error = steps_of(obj)["escape"]["error"]
    assert 'User "system:serviceaccount:agents:planner" cannot get resource "configmaps"' in error
    assert 'in the namespace "default"' in error


def test_wait_for_a_field(kube: Kube, operator: object, agent_may_edit_configmaps: None) -> None:
    name, cm = unique("k8s-wait"), unique("gate")
    kube.apply(configmap(cm, NS, ready="no"))

    def flip() -> None:
        time.sleep(1.5)
        kube.run("patch", "configmap", cm, "-n", NS, "--type=merge", "-p", '{"data":{"ready":"yes"}}')

    threading.Thread(target=flip).start()
    kube.apply(
        wf(
            name,
            {
                "name": "until-ready",
                "capability": "k8s.wait",
                "inputs": {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": cm,
                    "path": "data.ready",
                    "value": "yes",
                    "timeoutSeconds": 20,
                },
            },
        ),
        namespace=NS,
        as_="agent",
    )
    obj = wait_terminal(kube, NS, name, timeout=40)
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED
    assert steps_of(obj)["until-ready"]["outputs"]["waitedSeconds"] >= 1.0


def test_delete_needs_approval_and_is_undone_by_re_creating(
    kube: Kube, operator: object, agent_may_edit_configmaps: None
) -> None:
    name, cm = unique("k8s-delete"), unique("doomed")
    kube.apply(configmap(cm, NS, keep="me"))
    kube.apply(
        wf(
            name,
            {
                "name": "remove",
                "capability": "k8s.delete",
                "inputs": {"apiVersion": "v1", "kind": "ConfigMap", "name": cm},
            },
            fail_step("remove"),
        ),
        namespace=NS,
        as_="agent",
    )
    obj = kube.wait_for(
        "wf",
        name,
        NS,
        lambda o: o.get("status", {}).get("phase") == WorkflowPhase.AWAITING_APPROVAL,
        what="AwaitingApproval (k8s.delete is HIGH risk)",
    )
    approval = steps_of(obj)["remove"]["approval"]
    assert kube.get("approval", approval, NS)["spec"]["riskLevel"] == "HIGH"
    kube.run(
        "patch", "approval", approval, "-n", NS, "--type=merge", "-p", '{"spec":{"decision":"Approved"}}', as_="alice"
    )
    obj = wait_terminal(kube, NS, name)
    assert obj["status"]["phase"] == WorkflowPhase.COMPENSATED, obj["status"]
    assert steps_of(obj)["remove"]["outputs"] == {"existed": True}
    assert kube.get("configmap", cm, NS)["data"] == {"keep": "me"}  # re-created from the snapshot


def test_the_operator_runs_on_a_service_account_token_as_in_a_pod(
    kube: Kube, operator: Any, agent_may_edit_configmaps: None
) -> None:
    """In a cluster the operator authenticates with its ServiceAccount's token, not a client certificate:
    kopf's watches, the status writes, the webhooks' identity and the impersonating k8s.* gateway all use it."""
    account = "system:serviceaccount:airun-system:airun-operator"
    namespace, name = account.split(":")[2:]
    kube.run("create", "namespace", namespace, check=False)
    kube.run("create", "serviceaccount", name, "-n", namespace, check=False)
    token = kube.run("create", "token", name, "-n", namespace, "--duration=1h").stdout.strip()
    cluster = kube.run("config", "view", "-o", "jsonpath={.contexts[?(@.name=='operator')].context.cluster}").stdout
    kube.run("config", "set-credentials", "operator-token", f"--token={token}")
    kube.run("config", "set-context", "operator-token", f"--cluster={cluster}", "--user=operator-token")
    operator.stop_operator()
    try:
        operator.start_operator(context="operator-token")
        name, cm = unique("k8s-token"), unique("settings")
        kube.apply(
            wf(name, {"name": "apply", "capability": "k8s.apply", "inputs": {"manifest": configmap(cm, mode="t")}}),
            namespace=NS,
            as_="agent",
        )
        obj = wait_terminal(kube, NS, name)
        assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, obj["status"]["steps"]
        assert obj["metadata"]["annotations"]["aifirst.dev/principal"] == "system:serviceaccount:agents:planner"
        created = kube.get("configmap", cm, NS)
        assert created["data"] == {"mode": "t"}
    finally:
        operator.stop_operator()
        operator.start_operator()
