"""The operator as the chart runs it, on a private control plane of its own: the whole chart applied for real
(as `helm install` would), then the operator started from the rendered Deployment, its arguments, environment
and volumes (Secrets written out as a kubelet would), authenticated with a token of the chart's
ServiceAccount. Only the container and the Service are missing: the webhooks are called on the operator's port
with the name of the chart's Service and checked against the chart's caBundle.

This shows what a dry run cannot: the chart's RBAC is enough for the operator to start and become ready, the
operator leaves the chart's webhook configurations alone, and every rendered path reaches its handler.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.gotools import tool
from tests.integration.test_chart import KUBE_VERSION, find, objects
from tests.integration.test_crds import valid_approval
from tests.kube import Kube

CHART = Path(__file__).resolve().parents[2] / "charts" / "airun"
NAMESPACE = "airun-system"
SERVICE_NAME = f"airun-webhook.{NAMESPACE}.svc"


@dataclass
class ChartOperator:
    kube: Kube
    docs: list[dict[str, Any]]
    ports: dict[str, int]
    log: Path

    def ca_bundle(self) -> bytes:
        configuration = self.kube.get("validatingwebhookconfiguration", "airun.aifirst.dev")
        return base64.b64decode(configuration["webhooks"][0]["clientConfig"]["caBundle"])


def _free_port() -> int:
    from controller.localcluster.cluster import free_port

    return free_port()


def _start_like_a_kubelet(docs: list[dict[str, Any]], root: Path, kube: Kube, log: Path) -> subprocess.Popen[bytes]:
    """The operator's container of the rendered Deployment, run as a process: volumes become folders (Secrets
    written out), mount paths in arguments and environment point at them, $(VAR) references are expanded."""
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts: dict[str, str] = {}
    for mount in container["volumeMounts"]:
        folder = root / "volumes" / mount["name"]
        folder.mkdir(parents=True)
        secret = volumes[mount["name"]].get("secret")
        if secret:
            for key, value in find(docs, "Secret", secret["secretName"])["data"].items():
                (folder / key).write_bytes(base64.b64decode(value))
        mounts[mount["mountPath"]] = str(folder)

    cluster = yaml.safe_load(kube.kubeconfig.read_text())["clusters"][0]["cluster"]
    host, _, port = cluster["server"].removeprefix("https://").rpartition(":")
    variables = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}

    # One pass, longest mount path first, whole path segments only: "/tmp" must not rewrite the folders.
    mount_path = re.compile(
        r"(?<![\w.-])(" + "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True)) + ")(?=/|$)"
    )

    def resolve(text: str) -> str:
        text = mount_path.sub(lambda match: mounts[match.group(1)], text)
        for name, value in variables.items():
            text = text.replace(f"$({name})", value)
        return text

    # Its identity: a token of the chart's ServiceAccount, as the kubelet would mount it.
    account = pod["serviceAccountName"]
    token = kube.run("create", "token", account, "-n", NAMESPACE).stdout.strip()
    kubeconfig = root / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [{"name": "pod", "context": {"cluster": "c", "user": account}}],
                "current-context": "pod",
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRUN_", "KUBECONFIG"))}
    env.update({e["name"]: resolve(e["value"]) for e in container.get("env", []) if "value" in e})
    env.update(variables)
    # The image's entrypoint `airun operator` is `python -m controller`.
    argv = [sys.executable, "-m", "controller", f"--kubeconfig={kubeconfig}", *map(resolve, container["args"])]
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)


@pytest.fixture(scope="module")
def chart_operator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartOperator]:
    from controller.localcluster.binaries import find_binaries
    from controller.localcluster.devenv import DevEnvironment

    if os.environ.get("AIRUN_TEST_KUBECONFIG"):
        pytest.skip("on a real cluster the chart's operator runs in its Pod (tests/e2e)")
    root = tmp_path_factory.mktemp("chart-operator")
    plane = DevEnvironment(root / "plane", fast_etcd=True, die_with_parent=True)
    plane.up(operator=False)
    process = None
    try:
        kube = Kube(find_binaries() / "kubectl", plane.kubeconfig, local=True)
        ports = {"health": _free_port(), "metrics": _free_port(), "webhook": _free_port()}
        values = root / "values.yaml"
        values.write_text(yaml.safe_dump({"operator": {"ports": ports}}))
        helm = tool("helm", "helm")
        argv = [str(helm), "template", "airun", str(CHART), "--namespace", NAMESPACE, "-f", str(values)]
        argv += ["--kube-version", KUBE_VERSION, "--include-crds"]
        rendered = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        kube.run("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=rendered)  # as helm install
        docs = objects(rendered)
        log = root / "operator.log"
        process = _start_like_a_kubelet(docs, root, kube, log)
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"the operator exited:\n{log.read_text()[-5000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports['health']}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the operator never became ready:\n{log.read_text()[-5000:]}"
            time.sleep(0.3)
        yield ChartOperator(kube, docs, ports, log)
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        plane.down()


def test_the_chart_rbac_lets_the_operator_start_and_serve(chart_operator: ChartOperator) -> None:
    ports = chart_operator.ports
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['health']}/healthz", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5) as response:
        assert b"airun_" in response.read()
    log = chart_operator.log.read_text()
    assert "forbidden" not in log.lower(), log[-5000:]


def test_the_operator_leaves_the_chart_webhook_configurations_alone(chart_operator: ChartOperator) -> None:
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        shown = chart_operator.kube.run("get", kind, "airun.aifirst.dev", "-o", "json", "--show-managed-fields")
        configuration = json.loads(shown.stdout)
        assert configuration["metadata"]["generation"] == 1
        assert {f["manager"] for f in configuration["metadata"]["managedFields"]} == {"kubectl"}
        assert all("service" in w["clientConfig"] and "url" not in w["clientConfig"] for w in configuration["webhooks"])


def _review(
    plural: str, kind: str, operation: str, user: str, new: dict[str, Any] | None, old: dict[str, Any] | None = None
) -> dict[str, Any]:
    resource = {"group": "aifirst.dev", "version": "v1alpha1", "resource": plural}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "aifirst.dev", "version": "v1alpha1", "kind": kind},
            "resource": resource,
            "requestKind": {"group": "aifirst.dev", "version": "v1alpha1", "kind": kind},
            "requestResource": resource,
            "name": (new or old or {})["metadata"]["name"],
            "namespace": None if plural == "capabilities" else "default",
            "operation": operation,
            "userInfo": {"username": user, "groups": ["system:authenticated"]},
            "object": new,
            "oldObject": old,
            "dryRun": False,
        },
    }


def _workflow(capability: str = "sys.sleep", principal: str | None = None, rollback: bool = False) -> dict[str, Any]:
    annotations = {"aifirst.dev/principal": principal} if principal else {}
    return {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "w", "namespace": "default", "annotations": annotations},
        "spec": {
            "description": "x",
            "steps": [{"name": "a", "capability": capability, "inputs": {"seconds": 0}}],
            **({"rollback": True} if rollback else {}),
        },
    }


def _approval(decision: str, decided_by: str | None = None) -> dict[str, Any]:
    approval = valid_approval()  # requested by bob
    approval["metadata"]["namespace"] = "default"
    approval["metadata"]["annotations"] = {"aifirst.dev/decided-by": decided_by} if decided_by else {}
    approval["spec"]["decision"] = decision
    return approval


def _transaction(principal: str | None = None, rollback: bool = False) -> dict[str, Any]:
    annotations = {"aifirst.dev/principal": principal} if principal else {}
    return {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": "Transaction",
        "metadata": {"name": "tx", "namespace": "default", "annotations": annotations},
        "spec": {"ttlSeconds": 60, **({"rollback": True} if rollback else {})},
        "status": {"phase": "Open", "principal": "bob"},
    }


# One request per webhook that only its own handler answers as asserted.
def _breakers(data: dict[str, str]) -> dict[str, Any]:
    metadata = {"name": "airun-breakers", "labels": {"aifirst.dev/state": "breakers"}}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def _core_review(plural: str, kind: str, operation: str, user: str, new: Any, old: Any) -> dict[str, Any]:
    review = _review(plural, kind, operation, user, new, old)
    for key in ("kind", "requestKind"):
        review["request"][key] = {"group": "", "version": "v1", "kind": kind}
    for key in ("resource", "requestResource"):
        review["request"][key] = {"group": "", "version": "v1", "resource": plural}
    return review


def _bad_condition() -> dict[str, Any]:
    return {"rules": [{"capabilities": ["io.fs.delete"], "when": "step.inputs.path.startsWith(", "action": "DENY"}]}


REVIEWS: dict[str, tuple[dict[str, Any], str]] = {
    # the principal is taken from authentication
    "workflow-principal": (_review("workflows", "Workflow", "CREATE", "bob", _workflow(principal="mallory")), "bob"),
    "workflow-runnable": (_review("workflows", "Workflow", "CREATE", "bob", _workflow("no.such.cap")), "no.such.cap"),
    "workflow-update": (
        _review("workflows", "Workflow", "UPDATE", "bob", _workflow(principal="mallory"), _workflow(principal="bob")),
        "cannot be changed",
    ),
    # who set spec.rollback is recorded from authentication
    "workflow-rollback-actor": (
        _review("workflows", "Workflow", "UPDATE", "bob", _workflow(rollback=True), _workflow()),
        "rollback-requested-by",
    ),
    # only records who deleted (audit): it allows, always
    "workflow-deletion": (_review("workflows", "Workflow", "DELETE", "bob", None, _workflow()), ""),
    "approval-decider": (
        _review("approvals", "Approval", "UPDATE", "alice", _approval("Approved"), _approval("")),
        "alice",
    ),
    "approval-decision": (
        _review("approvals", "Approval", "UPDATE", "bob", _approval("Approved", "bob"), _approval("")),
        "no self-approval",
    ),
    "capability-coherent": (
        _review("capabilities", "Capability", "CREATE", "bob", {"metadata": {"name": "io.fs.write_file"}, "spec": {}}),
        "io.fs.write_file",
    ),
    "breaker-reset": (
        _core_review("configmaps", "ConfigMap", "UPDATE", "bob", _breakers({"p-x": "{}"}), _breakers({})),
        "recorded by the operator",
    ),
    "policy-conditions": (
        _review("policies", "Policy", "CREATE", "bob", {"metadata": {"name": "p"}, "spec": _bad_condition()}),
        "line 1, column",
    ),
    "clusterpolicy-conditions": (
        _review(
            "clusterpolicies", "ClusterPolicy", "CREATE", "bob", {"metadata": {"name": "p"}, "spec": _bad_condition()}
        ),
        "line 1, column",
    ),
    # the creator of a transaction is taken from authentication; only they end it or delete it while it is open
    "transaction-principal": (
        _review("transactions", "Transaction", "CREATE", "bob", _transaction(principal="mallory")),
        "bob",
    ),
    "transaction-update": (
        _review("transactions", "Transaction", "UPDATE", "mallory", _transaction(rollback=True), _transaction()),
        "was begun by bob: only that principal may commit it or roll it back",
    ),
    "transaction-deletion": (
        _review("transactions", "Transaction", "DELETE", "mallory", None, _transaction()),
        "only its principal may delete it",
    ),
}


def _call(chart_operator: ChartOperator, path: str, review: dict[str, Any]) -> tuple[dict[str, Any], str]:
    # As the API server would: TLS to the chart's Service name, trusting only the chart's caBundle.
    context = ssl.create_default_context(cadata=chart_operator.ca_bundle().decode())
    with httpx.Client(verify=context, timeout=30) as http:
        reply = http.post(
            f"https://127.0.0.1:{chart_operator.ports['webhook']}{path}",
            json=review,
            extensions={"sni_hostname": SERVICE_NAME},
        )
    assert reply.status_code == 200, reply.text
    response: dict[str, Any] = reply.json()["response"]
    assert response["uid"] == review["request"]["uid"]
    patch = base64.b64decode(response["patch"]).decode() if response.get("patch") else ""
    return response, patch


def test_every_rendered_webhook_path_reaches_its_handler(chart_operator: ChartOperator) -> None:
    webhooks = [
        webhook
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        for webhook in find(chart_operator.docs, kind)["webhooks"]
    ]
    assert {w["name"].split(".")[0] for w in webhooks} == REVIEWS.keys()
    for webhook in webhooks:
        review, expected = REVIEWS[webhook["name"].split(".")[0]]
        response, patch = _call(chart_operator, webhook["clientConfig"]["service"]["path"], review)
        if webhook["failurePolicy"] == "Ignore":  # records only
            assert response["allowed"], (webhook["name"], response)
        elif webhook in find(chart_operator.docs, "MutatingWebhookConfiguration")["webhooks"]:
            assert response["allowed"] and expected in patch, (webhook["name"], response, patch)
        else:
            assert not response["allowed"] and expected in response["status"]["message"], (webhook["name"], response)

    # The control: a path that names no handler is answered, and nothing is checked (so the paths matter).
    review, _ = REVIEWS["workflow-runnable"]
    response, patch = _call(chart_operator, "/workflow_runnable", review)
    assert response["allowed"] and not patch
    assert json.dumps(response).count("no.such.cap") == 0
