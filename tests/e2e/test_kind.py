"""End to end on a real cluster where charts/airun is installed (`make kind-e2e`): the operator runs from its
image, the API server reaches its webhooks through the chart's Service and certificate, Prometheus would scrape
the metrics Service. Opt-in: skipped unless AIRUN_TEST_KUBECONFIG and AIRUN_TEST_RELEASE (NAMESPACE/RELEASE) are
set; the local control plane has no kubelet, so it cannot run these.
"""

from __future__ import annotations

import os

import pytest

from tests.kube import Kube

pytestmark = pytest.mark.e2e

RELEASE = os.environ.get("AIRUN_TEST_RELEASE", "")
if not (os.environ.get("AIRUN_TEST_KUBECONFIG") and RELEASE):
    pytest.skip("needs a cluster with the chart installed (make kind-e2e)", allow_module_level=True)
RELEASE_NAMESPACE, _, RELEASE_NAME = RELEASE.partition("/")
OPERATOR = f"deployment/{RELEASE_NAME}-operator"


def _allow_files(kube: Kube, namespace: str) -> None:
    kube.apply(
        {
            "apiVersion": "aifirst.dev/v1alpha1",
            "kind": "Policy",
            "metadata": {"name": "e2e-files"},
            "spec": {
                "mode": "Enforce",
                "default": "DENY",
                "rules": [{"principal": "*", "capabilities": ["io.fs.*", "sys.sleep"], "action": "ALLOW"}],
            },
        },
        namespace=namespace,
    )


def test_the_operator_is_available(kube: Kube) -> None:
    kube.run("-n", RELEASE_NAMESPACE, "rollout", "status", OPERATOR, "--timeout=120s")
    ready = kube.run("-n", RELEASE_NAMESPACE, "get", OPERATOR, "-o", "jsonpath={.status.readyReplicas}").stdout
    assert ready == "1"


def test_a_workflow_runs_with_its_principal_recorded_by_the_chart_webhooks(kube: Kube, namespace: str) -> None:
    _allow_files(kube, namespace)
    workflow = {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "hello", "annotations": {"aifirst.dev/principal": "someone-else"}},
        "spec": {
            "description": "write a file",
            "steps": [
                {"name": "greet", "capability": "io.fs.write_file", "inputs": {"path": "a.txt", "content": "hi"}}
            ],
        },
    }
    kube.apply(workflow, namespace=namespace, as_="bob")
    done = kube.wait_for(
        "wf",
        "hello",
        namespace,
        lambda o: o.get("status", {}).get("phase") == "Succeeded",
        timeout=120,
        what="Succeeded",
    )
    # The mutating webhook, reached through the chart's Service, overwrote what the body claimed.
    assert done["metadata"]["annotations"]["aifirst.dev/principal"] == "bob"


def test_an_unknown_capability_is_refused_at_apply_time(kube: Kube, namespace: str) -> None:
    workflow = {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "unknown"},
        "spec": {"description": "x", "steps": [{"name": "a", "capability": "no.such.thing", "inputs": {}}]},
    }
    result = kube.apply(workflow, namespace=namespace, as_="bob", check=False)
    assert result.returncode != 0 and "no.such.thing" in result.stderr


def test_metrics_and_probes_answer_through_the_services(kube: Kube) -> None:
    metrics = kube.run(
        "get", "--raw", f"/api/v1/namespaces/{RELEASE_NAMESPACE}/services/{RELEASE_NAME}-metrics:metrics/proxy/metrics"
    ).stdout
    assert "airun_" in metrics


def test_the_audit_trail_in_the_pod_verifies(kube: Kube) -> None:
    result = kube.run("-n", RELEASE_NAMESPACE, "exec", OPERATOR, "--", "airun", "audit", "verify", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
