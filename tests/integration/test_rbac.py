"""The roles hold: who may author, approve and view, checked by the real API server's RBAC."""

from __future__ import annotations

import pytest

from tests.integration.test_crds import valid_approval, valid_workflow
from tests.kube import Kube


@pytest.fixture
def approval(kube: Kube, namespace: str) -> str:
    kube.apply(valid_approval(), namespace=namespace)
    return "demo-approval"


def _patch_decision(kube: Kube, namespace: str, name: str, as_: str) -> tuple[int, str]:
    result = kube.run(
        "patch",
        "approval",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"decision":"Approved"}}',
        as_=as_,
        check=False,
    )
    return result.returncode, result.stderr


def test_bob_cannot_patch_an_approval(kube: Kube, namespace: str, approval: str) -> None:
    code, err = _patch_decision(kube, namespace, approval, "bob")
    assert code != 0
    assert "forbidden" in err and 'User "bob" cannot patch resource "approvals"' in err


def test_agent_cannot_patch_an_approval(kube: Kube, namespace: str, approval: str) -> None:
    code, err = _patch_decision(kube, namespace, approval, "agent")
    assert code != 0 and "forbidden" in err


def test_alice_can_patch_an_approval(kube: Kube, namespace: str, approval: str) -> None:
    code, err = _patch_decision(kube, namespace, approval, "alice")
    assert code == 0, err
    assert kube.get("approval", approval, namespace)["spec"]["decision"] == "Approved"


def test_alice_views_workflows_in_all_namespaces_but_cannot_create(kube: Kube, namespace: str) -> None:
    kube.apply(valid_workflow(), namespace=namespace, as_="bob")
    assert "demo" in kube.run("get", "wf", "-A", as_="alice").stdout
    result = kube.apply(valid_workflow("by-alice"), namespace=namespace, as_="alice", check=False)
    assert result.returncode != 0 and "forbidden" in result.stderr


def test_agent_authors_in_its_namespace_only(kube: Kube, namespace: str) -> None:
    kube.apply(valid_workflow(f"agent-{namespace}"), namespace="agents", as_="agent")
    result = kube.apply(valid_workflow(), namespace=namespace, as_="agent", check=False)
    assert result.returncode != 0
    assert 'User "system:serviceaccount:agents:planner" cannot' in result.stderr


def test_nobody_but_the_operator_writes_workflow_status(kube: Kube, namespace: str) -> None:
    kube.apply(valid_workflow(), namespace=namespace, as_="bob")
    for who in ("bob", "alice", "agent"):
        result = kube.run(
            "patch",
            "wf",
            "demo",
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            '{"status":{"phase":"Succeeded"}}',
            as_=who,
            check=False,
        )
        assert result.returncode != 0 and "forbidden" in result.stderr, who


def test_the_operator_reads_the_api_servers_addresses_and_its_own_secrets_only(kube: Kube, namespace: str) -> None:
    def can(verb: str, resource: str, ns: str) -> bool:
        result = kube.run("auth", "can-i", verb, resource, "-n", ns, as_="operator", check=False)
        return result.stdout.strip() == "yes"

    assert can("get", "endpointslices.discovery.k8s.io/kubernetes", "default")
    assert can("get", "endpoints/kubernetes", "default")
    assert not can("get", "endpointslices.discovery.k8s.io/other", "default")
    # credentials of custom Capability endpoints, watched for the Ready condition (SecretMissing)
    assert can("get", "secrets", "airun-system") and can("watch", "secrets", "airun-system")
    assert can("list", "secrets", "airun-system")
    assert not can("get", "secrets", namespace) and not can("list", "secrets", namespace)
    assert not can("watch", "secrets", namespace)
