"""Secrets against hostile remote APIs (issue 11, item 5): a reference is resolved only where the spec
wrote one, and a resolved value never comes back through outputs, status, events or the audit store."""

from __future__ import annotations

import base64
import json

import pytest

from controller.api.workflow import WorkflowPhase
from controller.audit.store import AuditStore
from controller.localcluster.devenv import DevEnvironment
from tests.httpserver import LoopbackAPI
from tests.integration.test_saga import steps_of, wait_terminal, wf
from tests.kube import Kube

SECRET = "s3cr3t-Zq9-value"


@pytest.fixture
def secret(kube: Kube, namespace: str) -> str:
    kube.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": SECRET}},
        namespace=namespace,
    )
    return SECRET


def _get(name: str, url: str, **inputs: object) -> dict[str, object]:
    return {"name": name, "capability": "net.http.get", "retry": {"limit": 0}, "inputs": {"url": url, **inputs}}


def _audit_text(operator: DevEnvironment, namespace: str, workflow: str) -> str:
    operator.stop_operator()  # flushes the audit writer; the next test gets a fresh operator
    operator.start_operator()
    store = AuditStore(operator.audit_url)
    return json.dumps([r.as_dict() for r in store.records(namespace=namespace, workflow=workflow)], default=str)


def test_secret_reference_from_remote_data_is_not_resolved(
    kube: Kube, namespace: str, operator: DevEnvironment, api: LoopbackAPI, secret: str
) -> None:
    step_b = _get("b", f"{api.url}/items", headers={"X-Passed-On": "{{ steps.a.outputs.json.x }}"})
    step_b["dependsOn"] = ["a"]
    kube.apply(wf("ref-from-data", _get("a", f"{api.url}/secret-ref"), step_b), namespace=namespace)
    obj = wait_terminal(kube, namespace, "ref-from-data")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, obj["status"]
    sent = api.requests[-1][2]["X-Passed-On"]
    assert secret not in sent and "secretKeyRef" in sent  # the data went on as data


def test_secret_value_echoed_by_the_remote_api_is_scrubbed(
    kube: Kube, namespace: str, operator: DevEnvironment, api: LoopbackAPI, secret: str
) -> None:
    ref = {"secretKeyRef": {"name": "s", "key": "k"}}
    step = _get("echo", f"{api.url}/echo-headers", headers={"Authorization": ref})
    kube.apply(wf("echoed", step), namespace=namespace)
    obj = wait_terminal(kube, namespace, "echoed")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, obj["status"]
    assert api.requests[-1][2]["Authorization"] == secret  # the remote API got the value
    echoed = steps_of(obj)["echo"]["outputs"]["json"]["headers"]
    assert echoed["Authorization"] == "***"
    encoded = base64.b64encode(secret.encode()).decode()
    visible = kube.run("get", "wf,events,approvals", "-n", namespace, "-o", "json", as_="alice").stdout
    audit = _audit_text(operator, namespace, "echoed")
    for text in (visible, audit):
        assert secret not in text and encoded not in text
