"""End to end on a cluster with a kubelet where charts/airun is installed (`make e2e` on this machine's own
node, `make kind-e2e` on kind): the operator runs as a Pod from its image, with the chart's ServiceAccount,
RBAC, certificates, probes and volumes; the API server reaches its webhooks through the chart's Service; the
metrics are scraped through the metrics Service. Opt-in: skipped unless AIRUN_TEST_KUBECONFIG and
AIRUN_TEST_RELEASE (NAMESPACE/RELEASE) are set (tools/e2e/run.sh sets both).

How they can fail: a chart whose ClusterRole lacks `workflows/status` leaves every workflow Pending (the
workflow tests time out); a broken webhook Service or caBundle refuses every apply (failurePolicy Fail); an
image that does not start never gets Ready (the first test); an audit volume that is not persistent loses the
first Pod's records (the restart test); a chart without the Lease rule in its Role, or without POD_NAME,
leaves the three replicas' shards unheld (the replicas test waits for them in vain).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import pytest
import yaml

from tests.integration.test_governance import decide, wait_phase
from tests.integration.test_saga import steps_of, wait_terminal, wf, write
from tests.kube import Kube

pytestmark = pytest.mark.e2e

RELEASE = os.environ.get("AIRUN_TEST_RELEASE", "")
if not (os.environ.get("AIRUN_TEST_KUBECONFIG") and RELEASE):
    pytest.skip("needs a cluster with the chart installed (make e2e, make kind-e2e)", allow_module_level=True)
RELEASE_NAMESPACE, _, RELEASE_NAME = RELEASE.partition("/")
OPERATOR = f"deployment/{RELEASE_NAME}-operator"
SELECTOR = f"app.kubernetes.io/instance={RELEASE_NAME}"


@pytest.fixture
def allowed(kube: Kube, namespace: str) -> str:
    """NAMESPACE, with a Policy that lets everybody use the capabilities these tests need."""
    kube.apply(
        {
            "apiVersion": "aifirst.dev/v1alpha1",
            "kind": "Policy",
            "metadata": {"name": "e2e"},
            "spec": {
                "mode": "Enforce",
                "default": "DENY",
                "rules": [{"principal": "*", "capabilities": ["io.fs.*", "sys.sleep", "test.*"], "action": "ALLOW"}],
            },
        },
        namespace=namespace,
    )
    time.sleep(1)  # the operator's policy index follows the watch
    return namespace


def operator_pods(kube: Kube) -> list[dict[str, Any]]:
    listed = kube.run("-n", RELEASE_NAMESPACE, "get", "pods", "-l", SELECTOR, "-o", "json").stdout
    return [p for p in json.loads(listed)["items"] if not p["metadata"].get("deletionTimestamp")]


def wait_operator_ready(kube: Kube, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for pod in operator_pods(kube):
            conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            if conditions.get("Ready") == "True":
                return pod
        assert time.monotonic() < deadline, f"no Ready operator Pod after {timeout} s"
        time.sleep(1)


def in_operator(kube: Kube, *argv: str) -> str:
    result = kube.run("-n", RELEASE_NAMESPACE, "exec", OPERATOR, "--", *argv, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def audit_records(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    lines = in_operator(kube, "airun", "audit", "export").splitlines()
    return [r for r in map(json.loads, lines) if r.get("namespace") == namespace]


def test_the_operator_runs_as_a_pod_of_the_chart(kube: Kube) -> None:
    kube.run("-n", RELEASE_NAMESPACE, "rollout", "status", OPERATOR, "--timeout=180s")
    (pod,) = operator_pods(kube)
    spec = pod["spec"]
    assert spec["serviceAccountName"] == f"{RELEASE_NAME}-operator"
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"livenessProbe", "readinessProbe", "startupProbe"} <= set(container)
    # Its identity is the projected ServiceAccount token the kubelet mounted, nothing of the host.
    who = in_operator(
        kube, "python3", "-c", "print(open('/var/run/secrets/kubernetes.io/serviceaccount/namespace').read())"
    )
    assert who.strip() == RELEASE_NAMESPACE


def test_a_workflow_runs_with_its_principal_recorded_by_the_chart_webhooks(kube: Kube, allowed: str) -> None:
    hello = wf("hello", write("greet", "a.txt"))
    hello["metadata"]["annotations"] = {"aifirst.dev/principal": "someone-else"}
    kube.apply(hello, namespace=allowed, as_="bob")
    done = wait_terminal(kube, allowed, "hello", timeout=120)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    # The mutating webhook, reached through the chart's Service, overwrote what the body claimed.
    assert done["metadata"]["annotations"]["aifirst.dev/principal"] == "bob"


def test_an_unknown_capability_is_refused_at_apply_time(kube: Kube, namespace: str) -> None:
    result = kube.apply(wf("unknown", {"name": "a", "capability": "no.such.thing"}), namespace=namespace, check=False)
    assert result.returncode != 0 and "no.such.thing" in result.stderr


def test_an_approval_is_decided_by_an_approver_and_the_workflow_goes_on(kube: Kube, allowed: str) -> None:
    kube.apply(
        wf("gated", {"name": "gate", "type": "Approval"}, write("after", "b.txt", ("gate",))),
        namespace=allowed,
        as_="bob",
    )
    obj = wait_phase(kube, allowed, "gated", "AwaitingApproval", timeout=120)
    approval = steps_of(obj)["gate"]["approval"]
    code, _ = decide(kube, allowed, approval, "Approved", "bob")
    assert code != 0, "bob requested it and may not approve it himself"
    assert decide(kube, allowed, approval, "Approved", "alice")[0] == 0
    done = wait_terminal(kube, allowed, "gated", timeout=120)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert kube.get("approval", approval, allowed)["metadata"]["annotations"]["aifirst.dev/decided-by"] == "alice"


def test_a_saga_compensates_the_completed_steps_when_a_later_one_fails(kube: Kube, allowed: str) -> None:
    failing = {"name": "boom", "capability": "test.fail", "dependsOn": ["first"], "retry": {"limit": 0}}
    kube.apply(wf("saga", write("first", "c.txt"), failing), namespace=allowed, as_="bob")
    done = wait_terminal(kube, allowed, "saga", timeout=120)
    assert done["status"]["phase"] == "Compensated", done["status"]
    assert steps_of(done)["first"]["phase"] == "Compensated"
    # The file the first step wrote is gone from the workspace volume.
    listing = in_operator(kube, "python3", "-c", f"import os; print(os.listdir('/var/lib/airun/workspaces/{allowed}'))")
    assert "c.txt" not in listing


def test_metrics_are_scraped_through_the_metrics_service(kube: Kube) -> None:
    path = f"/api/v1/namespaces/{RELEASE_NAMESPACE}/services/{RELEASE_NAME}-metrics:metrics/proxy/metrics"
    metrics = kube.run("get", "--raw", path).stdout
    assert "airun_workflows" in metrics or "airun_" in metrics


def test_the_workflow_finishes_after_its_operator_pod_is_replaced(kube: Kube, allowed: str) -> None:
    """Deleted mid-workflow, the Pod is replaced by the Deployment; the new one resumes from the checkpoint in
    status and finishes; the audit trail on its volume keeps the first Pod's records and still verifies."""
    nap = {"name": "nap", "capability": "sys.sleep", "inputs": {"seconds": 20}, "dependsOn": ["before"]}
    kube.apply(
        wf("survives", write("before", "d.txt"), nap, write("after", "e.txt", ("nap",))), namespace=allowed, as_="bob"
    )
    kube.wait_for(
        "wf",
        "survives",
        allowed,
        lambda o: steps_of(o).get("nap", {}).get("phase") == "Running" if o.get("status", {}).get("steps") else False,
        timeout=120,
        what="step nap Running",
    )
    (old,) = operator_pods(kube)
    kube.run("-n", RELEASE_NAMESPACE, "delete", "pod", old["metadata"]["name"], "--wait=false")
    new = wait_operator_ready(kube)
    assert new["metadata"]["name"] != old["metadata"]["name"]
    done = wait_terminal(kube, allowed, "survives", timeout=180)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert {s["name"]: s["phase"] for s in done["status"]["steps"]} == {
        "before": "Succeeded",
        "nap": "Succeeded",
        "after": "Succeeded",
    }
    kinds = [r["kind"] for r in audit_records(kube, allowed) if r.get("workflow") == "survives"]
    assert kinds.count("workflow.started") >= 1 and "workflow.finished" in kinds, kinds
    assert in_operator(kube, "airun", "audit", "verify") is not None


# Last: it changes the release (three replicas, no audit store, workspaces on each Pod's emptyDir).
def test_three_replicas_share_the_workflows_and_hand_them_over(kube: Kube, allowed: str) -> None:
    """helm upgrade to replicaCount=3: the chart's shard Leases spread the workflows over three operator Pods
    (all serving the webhooks through the Service); a Pod deleted mid-run hands its shards over (SIGTERM: its
    running steps finish first) and its workflows finish on the others. sys.sleep steps only: each Pod has
    its own emptyDir workspace here (a ReadWriteMany volume in production)."""
    helm = os.environ.get("AIRUN_TEST_HELM")
    if not helm:
        pytest.skip("needs AIRUN_TEST_HELM (tools/e2e/run.sh sets it)")
    upgrade = [
        helm, "upgrade", RELEASE_NAME, "charts/airun", "--kubeconfig", str(kube.kubeconfig),
        "--namespace", RELEASE_NAMESPACE, "--reuse-values", "--wait", "--timeout", "5m",
        "--set", "replicaCount=3", "--set", "audit.store=none", "--set", "workspaces.persistence.enabled=false",
    ]  # fmt: skip
    result = subprocess.run(upgrade, capture_output=True, text=True, timeout=400, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    kube.run("-n", RELEASE_NAMESPACE, "rollout", "status", OPERATOR, "--timeout=300s")
    pods = {p["metadata"]["name"] for p in operator_pods(kube)}
    assert len(pods) == 3, pods
    wait_holders(kube, pods)

    naps = [{"name": f"n{i}", "capability": "sys.sleep", "inputs": {"seconds": 4}} for i in range(3)]
    for i, nap in enumerate(naps[1:], 1):
        nap["dependsOn"] = [f"n{i - 1}"]
    names = [f"spread-{i}" for i in range(12)]
    kube.apply(yaml.safe_dump_all([{**wf(n, *naps)} for n in names]), namespace=allowed, as_="bob")
    time.sleep(3)
    holders = lease_holders(kube)
    victim = sorted(pods)[0]
    assert victim in holders.values(), holders
    kube.run("-n", RELEASE_NAMESPACE, "delete", "pod", victim, "--wait=false")
    for name in names:
        done = wait_terminal(kube, allowed, name, timeout=180)
        # Nothing was in doubt: the deleted Pod let its running steps finish before it handed them over.
        assert done["status"]["phase"] == "Succeeded", (name, done["status"])
    # Each replica names itself as the field manager of the status it writes: the work was spread.
    listed = kube.run("get", "wf", "-n", allowed, "-o", "json", "--show-managed-fields").stdout
    writers = {
        field["manager"]
        for item in json.loads(listed)["items"]
        if item["metadata"]["name"] in names
        for field in item["metadata"].get("managedFields") or []
        if field.get("subresource") == "status"
    }
    assert len(writers & pods) >= 2, (writers, pods)
    kube.run("-n", RELEASE_NAMESPACE, "rollout", "status", OPERATOR, "--timeout=300s")
    wait_holders(kube, {p["metadata"]["name"] for p in operator_pods(kube)})
    assert victim not in lease_holders(kube).values()


def lease_holders(kube: Kube) -> dict[str, str | None]:
    listed = kube.run("-n", RELEASE_NAMESPACE, "get", "leases", "-l", "aifirst.dev/lease=shard", "-o", "json").stdout
    return {item["metadata"]["name"]: item["spec"].get("holderIdentity") for item in json.loads(listed)["items"]}


def wait_holders(kube: Kube, pods: set[str], timeout: float = 120) -> None:
    """Until the chart's 6 shards are all held, each by one of PODS, and every Pod holds some."""
    deadline = time.monotonic() + timeout
    while True:
        holders = lease_holders(kube)
        if len(holders) == 6 and set(holders.values()) == pods:
            return
        assert time.monotonic() < deadline, f"shards not spread over {sorted(pods)} after {timeout} s: {holders}"
        time.sleep(1)
