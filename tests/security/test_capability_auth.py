"""Custom Capability endpoints against impostors (issue 11, item 10): the endpoint can tell the operator
from any other caller, by a bearer token or an HMAC signature from a Secret of the operator's namespace."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from controller.api.workflow import WorkflowPhase
from tests.httpserver import LoopbackAPI
from tests.integration.test_custom_capabilities import capability
from tests.integration.test_saga import steps_of, wait_terminal, wf
from tests.kube import Kube

OPERATOR_NAMESPACE = "airun-system"  # the local environment's operator


def verify(headers: Mapping[str, str], body: bytes, key: bytes, max_age: int = 300) -> bool:
    """The verifier of docs/capabilities.md ("For backend authors"), as a backend would run it."""
    timestamp = headers.get("X-Airun-Timestamp", "")
    signature = headers.get("X-Airun-Signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > max_age:
        return False
    expected = "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def _secret(kube: Kube, name: str, key: str, value: str) -> None:
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {key: value}}
    kube.apply(manifest, namespace=OPERATOR_NAMESPACE)


def _reader(name: str, url: str, auth: dict[str, Any], method: str = "POST") -> dict[str, Any]:
    return capability(
        name,
        url,
        sideEffects=[],
        risk={"level": "LOW", "reason": "reads"},
        http={"method": method, "url": url, "auth": auth},
    )


def test_capability_endpoint_authenticates_the_operator(
    kube: Kube, namespace: str, operator: object, api: LoopbackAPI
) -> None:
    suffix = namespace.replace("t-", "").replace("-", "")
    key, token = f"hmac-key-{suffix}", f"token-{suffix}-Qx7"
    _secret(kube, f"hmac-{suffix}", "key", key)
    _secret(kube, f"bearer-{suffix}", "token", token)
    signed, bearer = f"signed{suffix}.item.create", f"bearer{suffix}.echo"
    kube.apply(
        _reader(signed, f"{api.url}/items", {"type": "HMAC", "secretRef": {"name": f"hmac-{suffix}", "key": "key"}})
    )
    kube.apply(
        _reader(
            bearer,
            f"{api.url}/echo-headers",
            {"type": "Bearer", "secretRef": {"name": f"bearer-{suffix}", "key": "token"}},
            method="GET",
        )
    )
    time.sleep(0.5)  # the operator's capability index follows the watch
    steps = [
        {"name": "signed", "capability": signed, "inputs": {"name": "db"}, "retry": {"limit": 0}},
        {"name": "bearer", "capability": bearer, "inputs": {}, "retry": {"limit": 0}, "dependsOn": ["signed"]},
    ]
    kube.apply(wf("authenticated", *steps), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "authenticated")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, obj["status"]
    s = steps_of(obj)

    method, _, headers, body = next(r for r in api.requests if r[1] == "/items")
    assert method == "POST" and json.loads(body) == {"name": "db"}
    assert verify(headers, body, key.encode())
    assert headers["Idempotency-Key"] == s["signed"]["idempotencyKey"]
    # What the endpoint must refuse: no signature, another key, another body, an old timestamp.
    unsigned = {k: v for k, v in headers.items() if k != "X-Airun-Signature"}
    assert not verify(unsigned, body, key.encode())
    assert not verify(headers, body, b"someone else's key")
    assert not verify(headers, body + b" ", key.encode())
    assert not verify({**headers, "X-Airun-Timestamp": str(int(time.time()) - 3600)}, body, key.encode())

    echoed = next(r for r in api.requests if r[1] == "/echo-headers")[2]
    assert echoed["Authorization"] == f"Bearer {token}"
    assert echoed["Idempotency-Key"] == s["bearer"]["idempotencyKey"]
    assert s["bearer"]["outputs"]["headers"]["Authorization"] == "Bearer ***"  # the echo is scrubbed
    visible = kube.run("get", "wf,events", "-n", namespace, "-o", "json", as_="alice").stdout
    assert token not in visible and key not in visible


def test_capability_auth_cannot_name_another_namespace_or_travel_in_clear(kube: Kube, operator: object) -> None:
    auth = {"type": "Bearer", "secretRef": {"name": "db", "key": "password", "namespace": "team-b"}}
    result = kube.apply(_reader("elsewhere.secret.read", "https://api.example.com/x", auth), check=False)
    assert result.returncode != 0 and "namespace" in result.stderr, result.stderr
    auth = {"type": "Bearer", "secretRef": {"name": "db", "key": "password"}}
    result = kube.apply(_reader("clear.token.send", "http://api.example.com/x", auth), check=False)
    assert result.returncode != 0 and "https://" in result.stderr, result.stderr
    result = kube.apply(_reader("odd.auth.kind", "https://api.example.com/x", {**auth, "type": "Basic"}), check=False)
    assert result.returncode != 0 and "Basic" in result.stderr, result.stderr
