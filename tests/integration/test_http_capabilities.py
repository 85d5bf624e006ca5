"""net.http.* through the real operator, against a real loopback HTTP server; and the attacks."""

from __future__ import annotations

from typing import Any

import pytest

from controller.api.workflow import WorkflowPhase
from controller.localcluster.devenv import DevEnvironment
from tests.httpserver import LoopbackAPI
from tests.integration.test_saga import _kill_operator, steps_of, wait_terminal, wf
from tests.kube import Kube


def create_item(api: LoopbackAPI, name: str = "create") -> dict[str, Any]:
    return {
        "name": name,
        "capability": "net.http.request",
        "inputs": {"method": "POST", "url": f"{api.url}/items", "json": {"size": "medium"}},
        "compensation": {
            "capability": "net.http.request",
            "inputs": {"method": "DELETE", "url": "{{ outputs.json.url }}", "okStatus": [404]},
        },
    }


def test_post_then_failure_compensates_with_the_declared_delete(
    kube: Kube, namespace: str, operator: object, api: LoopbackAPI
) -> None:
    kube.apply(
        wf(
            "http-saga",
            create_item(api),
            {
                "name": "check",
                "capability": "net.http.get",
                "dependsOn": ["create"],
                "inputs": {"url": "{{ steps.create.outputs.json.url }}"},
            },
            {"name": "boom", "capability": "test.fail", "dependsOn": ["check"], "retry": {"limit": 0}},
        ),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_terminal(kube, namespace, "http-saga")
    assert obj["status"]["phase"] == WorkflowPhase.COMPENSATED, obj["status"]
    s = steps_of(obj)
    assert s["check"]["outputs"]["json"] == {"size": "medium"}
    assert api.items == {}  # created, then deleted by the compensation
    methods = [(m, p) for m, p, _, _ in api.requests]
    assert methods == [("POST", "/items"), ("GET", "/items/1"), ("DELETE", "/items/1")]
    post_headers = api.requests[0][2]
    assert post_headers["Idempotency-Key"] == s["create"]["idempotencyKey"]


def test_request_without_a_declared_inverse_is_refused_at_apply(kube: Kube, namespace: str, operator: object) -> None:
    step = create_item(_Fake())  # type: ignore[arg-type]
    step.pop("compensation")
    result = kube.apply(wf("no-undo", step), namespace=namespace, as_="bob", check=False)
    assert result.returncode != 0 and "undone by the inverse the step declares" in result.stderr


class _Fake:
    url = "http://example.invalid"


def _get(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "capability": "net.http.get", "inputs": {"url": url}, "retry": {"limit": 0}}


@pytest.mark.parametrize("target", ["metadata", "apiserver", "apiserver-ipv6", "apiserver-by-name", "redirect"])
def test_ssrf_is_refused(kube: Kube, namespace: str, operator: DevEnvironment, api: LoopbackAPI, target: str) -> None:
    port = operator.cluster.ports.apiserver
    url = {
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "apiserver": f"https://127.0.0.1:{port}/api",
        "apiserver-ipv6": f"https://[::1]:{port}/api",
        "apiserver-by-name": f"https://localhost:{port}/api",
        "redirect": f"{api.url}/redirect-to-metadata",
    }[target]
    kube.apply(wf("ssrf", _get("probe", url)), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "ssrf")
    assert obj["status"]["phase"] == WorkflowPhase.FAILED
    error = steps_of(obj)["probe"]["error"]
    assert "refused by the egress rules" in error, error


def test_response_size_is_limited(kube: Kube, namespace: str, operator: object, api: LoopbackAPI) -> None:
    kube.apply(wf("big", _get("fetch", f"{api.url}/big")), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "big")
    assert "response larger than 1048576 bytes" in steps_of(obj)["fetch"]["error"]


def test_secret_references_are_resolved_as_the_principal_and_never_stored(
    kube: Kube, namespace: str, operator: object, api: LoopbackAPI
) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "api-token"},
            "stringData": {"token": "s3cr3t-value"},
        },
        namespace=namespace,
    )
    step = {
        "name": "call",
        "capability": "net.http.get",
        "retry": {"limit": 0},
        "inputs": {
            "url": f"{api.url}/items",
            "headers": {"Authorization": {"secretKeyRef": {"name": "api-token", "key": "token"}}},
        },
    }
    kube.apply(wf("with-secret", step), namespace=namespace, as_="admin")
    obj = wait_terminal(kube, namespace, "with-secret")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, obj["status"]
    assert api.requests[-1][2]["Authorization"] == "s3cr3t-value"
    everything = kube.run("get", "wf,events,approvals", "-n", namespace, "-o", "json").stdout
    assert "s3cr3t-value" not in everything

    # bob may not read that secret: neither may his workflow.
    kube.apply(wf("bobs-secret", step), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "bobs-secret")
    assert 'User "bob" cannot get resource "secrets"' in steps_of(obj)["call"]["error"]


def test_crash_during_an_idempotent_http_step_runs_it_again_with_the_same_key(
    kube: Kube, namespace: str, restartable: DevEnvironment, api: LoopbackAPI
) -> None:
    api.delay = 3.0
    create = create_item(api) | {"idempotent": True}
    create["inputs"] = {**create["inputs"], "url": f"{api.url}/keyed-items"}
    check = {
        "name": "check",
        "capability": "net.http.get",
        "dependsOn": ["create"],
        "inputs": {"url": "{{ steps.create.outputs.json.url }}"},
    }
    kube.apply(wf("crash-http", create, check), namespace=namespace, as_="bob")
    kube.wait_for("wf", "crash-http", namespace, lambda o: bool(api.by_key), what="the POST arrived")
    _kill_operator(restartable)
    restartable.start_operator()
    obj = wait_terminal(kube, namespace, "crash-http")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    key = steps_of(obj)["create"]["idempotencyKey"]
    posts = [headers["Idempotency-Key"] for method, _, headers, _ in api.requests if method == "POST"]
    assert posts == [key, key]  # sent again after the crash, with the same key
    assert list(api.items) == ["1"]  # and the remote API made one item, not two
    assert steps_of(obj)["check"]["outputs"]["json"] == {"size": "medium"}
    assert "Recovered" in kube.events_of("crash-http", namespace, contains="Recovered")


def test_idempotent_needs_a_capability_that_sends_the_key(kube: Kube, namespace: str, operator: object) -> None:
    step = {"name": "w", "capability": "io.fs.write_file", "inputs": {"path": "a", "content": "x"}, "idempotent": True}
    result = kube.apply(wf("idem-fs", step), namespace=namespace, as_="bob", check=False)
    assert result.returncode != 0
    assert "idempotent: true needs a capability that sends the Idempotency-Key header" in result.stderr
    assert "io.fs.write_file does not" in result.stderr
