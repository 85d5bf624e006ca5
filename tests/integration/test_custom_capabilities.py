"""Capability objects: HTTP-backed capabilities without Python, checked like the built-in ones."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from controller.api.workflow import WorkflowPhase
from controller.localcluster.devenv import DevEnvironment
from tests.httpserver import LoopbackAPI
from tests.integration.test_saga import steps_of, wait_terminal, wf
from tests.kube import Kube


def capability(name: str, url: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": "Capability",
        "metadata": {"name": name},
        "spec": {
            "description": f"{name} over HTTP",
            "risk": {"level": "MEDIUM", "reason": "creates billable things"},
            "sideEffects": ["network.write"],
            "idempotent": True,
            "http": {"url": url},
            **spec,
        },
    }


def test_custom_http_capability_runs_and_is_compensated(
    kube: Kube, namespace: str, operator: object, api: LoopbackAPI
) -> None:
    suffix = namespace.replace("t-", "").replace("-", "")
    create, delete = f"cloud{suffix}.db.create", f"cloud{suffix}.db.delete"
    kube.apply(
        capability(
            delete,
            f"{api.url}/items",
            internal=True,
            http={"method": "POST", "url": f"{api.url}/items"},
            risk={"level": "MEDIUM", "reason": "deletes"},
        )
    )
    # The undo endpoint of this toy API is DELETE /items/ID: declare the compensation as net.http.request.
    kube.run("delete", "capability", delete)
    kube.apply(
        capability(
            create,
            f"{api.url}/items",
            inputs={"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
            compensation={"capability": "net.http.request", "inputs": {"method": "DELETE", "url": "{{ outputs.url }}"}},
        )
    )
    time.sleep(0.5)  # the operator's capability index follows the watch
    bad = kube.apply(
        wf("bad-input", {"name": "db", "capability": create, "inputs": {"size": 3}}), namespace=namespace, as_="bob"
    )
    assert bad.returncode == 0
    obj = wait_terminal(kube, namespace, "bad-input")
    assert "'name' is a required property" in steps_of(obj)["db"]["error"]

    kube.apply(
        wf(
            "custom",
            {"name": "db", "capability": create, "inputs": {"name": "prod-db"}},
            {"name": "boom", "capability": "test.fail", "dependsOn": ["db"], "retry": {"limit": 0}},
        ),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_terminal(kube, namespace, "custom")
    assert obj["status"]["phase"] == WorkflowPhase.COMPENSATED, obj["status"]
    assert steps_of(obj)["db"]["outputs"]["id"] == "1"
    assert [(m, p) for m, p, _, _ in api.requests if m != "GET"] == [("POST", "/items"), ("DELETE", "/items/1")]
    assert api.items == {}

    # Deleted, it is gone for new workflows (refused at apply), however it was first learnt
    kube.run("delete", "capability", create)
    time.sleep(0.5)  # the index follows the watch
    gone = kube.apply(wf("after", {"name": "db", "capability": create}), namespace=namespace, as_="bob", check=False)
    assert gone.returncode != 0 and "unknown capability" in gone.stderr, gone.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"risk": {"level": "LOW", "reason": "cheap"}}, "R3: network writes must be MEDIUM risk or above"),
        ({"idempotent": False, "sideEffects": []}, "R4: a capability without side effects must be idempotent"),
    ],
)
def test_incoherent_capabilities_are_refused_at_apply(
    kube: Kube, operator: object, change: dict[str, Any], message: str
) -> None:
    manifest = capability("cloud.bad.thing", "http://127.0.0.1:9/x", **change)
    manifest["spec"].setdefault("compensation", {"capability": "net.http.request", "inputs": {}})
    result = kube.apply(manifest, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})


def wait_ready(kube: Kube, name: str, status: str) -> dict[str, Any]:
    obj = kube.wait_for(
        "capability", name, None, lambda o: ready_condition(o).get("status") == status, what=f"Ready={status}"
    )
    return ready_condition(obj)


def test_a_capability_applied_before_its_compensation_is_ready_once_that_appears(
    kube: Kube, namespace: str, operator: object, api: LoopbackAPI
) -> None:
    """GitOps order (Argo CD, Flux): accepted, Ready=False until its compensation exists; workflows that use
    it are refused until then, and again once the compensation is deleted."""
    suffix = namespace.replace("t-", "").replace("-", "")
    create, undo = f"gitops{suffix}.item.create", f"gitops{suffix}.item.delete"
    applied = kube.apply(capability(create, f"{api.url}/items", compensation={"capability": undo, "inputs": {}}))
    assert f"capability {create} is not ready: compensation {undo!r} is not a capability (yet)" in applied.stderr
    condition = wait_ready(kube, create, "False")
    assert condition["reason"] == "CompensationUnknown" and undo in condition["message"], condition
    printed = kube.run("get", "capability", create, "-o", "wide").stdout
    assert "CompensationUnknown" in printed, printed

    uses_it = wf(
        "uses-it",
        {"name": "item", "capability": create},
        {"name": "boom", "capability": "test.fail", "dependsOn": ["item"], "retry": {"limit": 0}},
    )
    refused = kube.apply(uses_it, namespace=namespace, as_="bob", check=False)
    assert refused.returncode != 0, refused.stdout
    assert f"capability {create} is not ready: its compensation {undo!r} is not a capability (yet)" in refused.stderr

    # The compensation arrives (its undo: DELETE of the first item of this toy API).
    first = f"{api.url}/items/1"
    kube.apply(capability(undo, first, internal=True, http={"method": "DELETE", "url": first}))
    assert wait_ready(kube, undo, "True")["reason"] == "Ready"
    assert wait_ready(kube, create, "True")["reason"] == "Ready"
    kube.apply(uses_it, namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "uses-it")
    assert obj["status"]["phase"] == "Compensated", obj["status"]
    assert [(m, p) for m, p, _, _ in api.requests if m != "GET"] == [("POST", "/items"), ("DELETE", "/items/1")]

    # Deleted again: not ready, and refused again.
    kube.run("delete", "capability", undo)
    assert wait_ready(kube, create, "False")["reason"] == "CompensationUnknown"
    again = kube.apply(wf("again", {"name": "item", "capability": create}), namespace=namespace, as_="bob", check=False)
    assert again.returncode != 0 and "is not ready" in again.stderr, again.stderr


OPERATOR_NAMESPACE = "airun-system"  # the local environment's operator: where endpoint credentials live


def secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def test_a_capability_applied_before_its_secret_is_ready_once_that_appears(
    kube: Kube, namespace: str, operator: DevEnvironment, api: LoopbackAPI
) -> None:
    """GitOps order for spec.http.auth.secretRef: accepted, Ready=False (SecretMissing, naming the Secret and
    the namespace, never a value) until the Secret and its key are in the operator's namespace; workflows
    that use it are refused until then, and again once the Secret is deleted."""
    suffix = namespace.replace("t-", "").replace("-", "")
    name, credential = f"gitops{suffix}.secret.echo", f"endpoint-{suffix}"
    token, other = f"token-{suffix}-Zq9", f"password-{suffix}-Wv4"
    auth = {"type": "Bearer", "secretRef": {"name": credential, "key": "token"}}
    url = f"{api.url}/echo-headers"
    reader = capability(
        name,
        url,
        sideEffects=[],
        risk={"level": "LOW", "reason": "reads"},
        http={"method": "GET", "url": url, "auth": auth},
    )
    applied = kube.apply(reader)
    absent = f"Secret {credential!r} is not in the operator's namespace {OPERATOR_NAMESPACE!r} (yet)"
    assert f"capability {name} is not ready: {absent}" in applied.stderr, applied.stderr
    condition = wait_ready(kube, name, "False")
    assert condition["reason"] == "SecretMissing" and absent in condition["message"], condition
    assert "SecretMissing" in kube.run("get", "capability", name, "-o", "wide").stdout

    # A Secret of that name in another namespace changes nothing: only the operator's own is ever read.
    kube.apply(secret(credential, token=token), namespace=namespace)
    uses_it = wf("uses-it", {"name": "echo", "capability": name, "retry": {"limit": 0}})
    time.sleep(1)
    refused = kube.apply(uses_it, namespace=namespace, as_="bob", check=False)
    assert refused.returncode != 0, refused.stdout
    assert f"step 'echo': capability {name} is not ready: {absent}" in refused.stderr, refused.stderr
    assert wait_ready(kube, name, "False")["message"] == condition["message"]

    # The Secret arrives without the key the Capability names: still not ready, and says which key.
    kube.apply(secret(credential, password=other), namespace=OPERATOR_NAMESPACE)
    no_key = "has no key 'token'"
    obj = kube.wait_for(
        "capability", name, None, lambda o: no_key in ready_condition(o).get("message", ""), what="no key"
    )
    assert ready_condition(obj)["status"] == "False" and ready_condition(obj)["reason"] == "SecretMissing"
    assert "password" not in ready_condition(obj)["message"]  # the Secret's other keys are not told

    # And with it: ready, and the workflow runs with the token.
    kube.apply(secret(credential, password=other, token=token), namespace=OPERATOR_NAMESPACE)
    assert wait_ready(kube, name, "True")["reason"] == "Ready"
    kube.apply(uses_it, namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "uses-it")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, obj["status"]
    assert next(r for r in api.requests if r[1] == "/echo-headers")[2]["Authorization"] == f"Bearer {token}"

    # Rotated: the next call sends the new token (the watch drops the cached one, no 30 s wait).
    rotated = f"rotated-{suffix}-Hk3"
    kube.apply(secret(credential, password=other, token=rotated), namespace=OPERATOR_NAMESPACE)
    time.sleep(1)  # the watch event
    kube.apply(
        wf("rotated", {"name": "echo", "capability": name, "retry": {"limit": 0}}), namespace=namespace, as_="bob"
    )
    assert wait_terminal(kube, namespace, "rotated")["status"]["phase"] == WorkflowPhase.SUCCEEDED
    sent = [r[2]["Authorization"] for r in api.requests if r[1] == "/echo-headers"]
    assert sent == [f"Bearer {token}", f"Bearer {rotated}"], sent

    # Deleted: not ready again, and refused again.
    kube.run("delete", "secret", credential, "-n", OPERATOR_NAMESPACE)
    assert wait_ready(kube, name, "False")["reason"] == "SecretMissing"
    again = kube.apply(wf("again", {"name": "echo", "capability": name}), namespace=namespace, as_="bob", check=False)
    assert again.returncode != 0 and absent in again.stderr, again.stderr

    # No value of the Secret in what anybody sees: conditions, events, the operator's log.
    seen = kube.run("get", "capability", name, "-o", "json").stdout
    seen += kube.run("get", "events", "-A", "-o", "json").stdout
    seen += (operator.dir / "logs" / "operator.log").read_text()
    assert token not in json.dumps(obj["status"])
    assert not [v for v in (token, rotated, other) if v in seen]


def test_a_capability_whose_compensation_lacks_its_secret_is_not_ready_until_that_appears(
    kube: Kube, namespace: str, operator: object, api: LoopbackAPI
) -> None:
    """What undoes a step must be able to run: a Capability whose compensation's endpoint has no Secret yet is
    not ready either, and turns ready when that Secret appears: the Secret's event re-evaluates both, even when
    the compensation's own condition does not change (it stays not ready for a reason of its own)."""
    suffix = namespace.replace("t-", "").replace("-", "")
    create, undo, credential = f"pair{suffix}.item.create", f"pair{suffix}.item.delete", f"undo-{suffix}"
    first = f"{api.url}/items/1"
    auth = {"type": "HMAC", "secretRef": {"name": credential, "key": "key"}}
    never = {"capability": f"pair{suffix}.never", "inputs": {}}  # what would undo the undo: never applied
    kube.apply(capability(undo, first, http={"method": "DELETE", "url": first, "auth": auth}, compensation=never))
    kube.apply(capability(create, f"{api.url}/items", compensation={"capability": undo, "inputs": {}}))
    condition = wait_ready(kube, create, "False")
    assert condition["reason"] == "SecretMissing", condition
    assert condition["message"].startswith(f"its compensation {undo!r} is not ready: Secret {credential!r}")
    assert wait_ready(kube, undo, "False")["reason"] == "CompensationUnknown"
    refused = kube.apply(
        wf("pair", {"name": "item", "capability": create}), namespace=namespace, as_="bob", check=False
    )
    assert refused.returncode != 0, refused.stdout
    assert f"step 'item': capability {undo} is not ready: Secret {credential!r}" in refused.stderr, refused.stderr

    kube.apply(secret(credential, key=f"hmac-{suffix}"), namespace=OPERATOR_NAMESPACE)
    assert wait_ready(kube, create, "True")["reason"] == "Ready"
    assert wait_ready(kube, undo, "False")["reason"] == "CompensationUnknown"
    kube.apply(wf("pair", {"name": "item", "capability": create}), namespace=namespace, as_="bob")
    kube.run("delete", "secret", credential, "-n", OPERATOR_NAMESPACE)
    assert wait_ready(kube, create, "False")["reason"] == "SecretMissing"


def test_builtin_names_and_bad_names_are_refused(kube: Kube, operator: object) -> None:
    result = kube.apply(capability("io.fs.write_file", "http://127.0.0.1:9/x"), check=False)
    assert result.returncode != 0  # not even a valid object name (underscore)
    result = kube.apply(
        capability("sys.sleep", "http://127.0.0.1:9/x", compensation={"capability": "net.http.request", "inputs": {}}),
        check=False,
    )
    assert result.returncode != 0 and "is a built-in capability" in result.stderr
