"""k8s.* handlers: the Kubernetes API through httpx, impersonating the workflow's principal."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller.capabilities.base import CapabilityError, Handler, Invocation
from controller.capabilities.handlers.fs import RESERVED, _atomic_write

FIELD_MANAGER = "airun"
PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
# Server-populated fields that a restore must not send back.
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "selfLink")


@dataclass
class KubeGateway:
    """The operator's connection, used on behalf of principals (Impersonate-User/Group headers)."""

    server: str
    ssl_context: ssl.SSLContext
    token: Callable[[], Awaitable[str | None]] | None = None  # asked per request: tokens rotate
    _client: httpx.AsyncClient | None = None
    _resources: dict[str, dict[str, tuple[str, bool]]] = field(default_factory=dict)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.server, verify=self.ssl_context, timeout=30, trust_env=False)
        return self._client

    async def _authorization(self) -> list[tuple[str, str]]:
        token = await self.token() if self.token else None
        return [("Authorization", f"Bearer {token}")] if token else []

    async def call(self, inv: Invocation, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = [("Impersonate-User", inv.principal)] + [
            ("Impersonate-Group", g) for g in inv.groups if g != "system:authenticated"
        ]
        headers += list((kwargs.pop("headers", None) or {}).items())
        headers += await self._authorization()
        try:
            return await self.client.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as error:
            raise CapabilityError(f"{method} {path}: {type(error).__name__}: {error}") from error

    async def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of a kind, from the API server's discovery (cached)."""
        if api_version not in self._resources:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            response = await self.client.get(path, headers=await self._authorization())
            if response.status_code == 404:
                raise CapabilityError(f"unknown apiVersion {api_version}", retryable=False)
            response.raise_for_status()
            self._resources[api_version] = {
                r["kind"]: (r["name"], r["namespaced"]) for r in response.json()["resources"] if "/" not in r["name"]
            }
        found = self._resources[api_version].get(kind)
        if found is None:
            raise CapabilityError(f"{api_version} has no kind {kind}", retryable=False)
        return found

    async def read_as_operator(self, path: str) -> httpx.Response:
        """A GET with the operator's own identity (no impersonation): only for what the operator itself
        needs, such as the credentials of custom Capability endpoints in its own namespace."""
        try:
            return await self.client.get(path, headers=await self._authorization())
        except httpx.HTTPError as error:
            raise CapabilityError(f"GET {path}: {type(error).__name__}: {error}") from error

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _gateway(inv: Invocation) -> KubeGateway:
    if not isinstance(inv.kube, KubeGateway):
        raise CapabilityError("k8s.* capabilities need the operator's API connection", retryable=False)
    if not inv.principal:
        raise CapabilityError("no principal to act as", retryable=False)
    return inv.kube


async def _path(
    gw: KubeGateway, inv: Invocation, api_version: str, kind: str, name: str, namespace: str | None
) -> tuple[str, str | None]:
    plural, namespaced = await gw.resource(api_version, kind)
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespaced:
        namespace = namespace or inv.namespace
        return f"{base}/namespaces/{namespace}/{plural}/{name}", namespace
    return f"{base}/{plural}/{name}", None


def _failed(response: httpx.Response, what: str) -> CapabilityError:
    try:
        message = response.json().get("message", response.text)
    except (json.JSONDecodeError, AttributeError):
        message = response.text
    retryable = response.status_code >= 500 or response.status_code in (409, 429)
    return CapabilityError(f"{what}: HTTP {response.status_code}: {message}", retryable=retryable)


# -- snapshots -----------------------------------------------------------------------------------------


def _snapshot_file(inv: Invocation, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in key)
    return inv.workspace.resolve() / RESERVED / "k8s-snapshots" / f"{safe}.json"


async def _snapshot(gw: KubeGateway, inv: Invocation, ref: dict[str, Any]) -> dict[str, Any] | None:
    """Records the object as it is (once per key, so a re-run keeps the state before the step)."""
    path, namespace = await _path(gw, inv, ref["apiVersion"], ref["kind"], ref["name"], ref.get("namespace"))
    response = await gw.call(inv, "GET", path)
    if response.status_code not in (200, 404):
        raise _failed(response, f"get {ref['kind']} {ref['name']}")
    before = response.json() if response.status_code == 200 else None
    file = _snapshot_file(inv, inv.idempotency_key)
    if not file.exists():
        record = {
            "apiVersion": ref["apiVersion"],
            "kind": ref["kind"],
            "name": ref["name"],
            "namespace": namespace,
            "object": before,
        }
        await asyncio.to_thread(_atomic_write, file, json.dumps(record).encode())
    return before


# -- handlers -------------------------------------------------------------------------------------------


async def apply(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    gw = _gateway(inv)
    manifest = dict(inputs["manifest"])
    meta = dict(manifest["metadata"])
    ref = {
        "apiVersion": manifest["apiVersion"],
        "kind": manifest["kind"],
        "name": meta["name"],
        "namespace": meta.get("namespace"),
    }
    path, namespace = await _path(gw, inv, ref["apiVersion"], ref["kind"], ref["name"], ref["namespace"])
    if namespace:
        meta["namespace"] = namespace
    manifest["metadata"] = meta
    before = await _snapshot(gw, inv, ref)
    response = await gw.call(
        inv,
        "PATCH",
        path,
        params={"fieldManager": FIELD_MANAGER, "force": "true"},
        content=json.dumps(manifest),
        headers={"Content-Type": "application/apply-patch+yaml"},
    )
    if response.status_code not in (200, 201):
        raise _failed(response, f"apply {manifest['kind']} {meta['name']}")
    applied = response.json()
    return {
        "apiVersion": manifest["apiVersion"],
        "kind": manifest["kind"],
        "name": meta["name"],
        "namespace": namespace or "",
        "created": before is None,
        "uid": applied["metadata"].get("uid", ""),
    }


async def patch(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    gw = _gateway(inv)
    path, namespace = await _path(
        gw, inv, inputs["apiVersion"], inputs["kind"], inputs["name"], inputs.get("namespace")
    )
    before = await _snapshot(gw, inv, inputs)
    if before is None:
        raise CapabilityError(f"{inputs['kind']} {inputs['name']} does not exist", retryable=False)
    content_type = PATCH_TYPES[inputs.get("type", "merge")]
    response = await gw.call(
        inv,
        "PATCH",
        path,
        params={"fieldManager": FIELD_MANAGER},
        content=json.dumps(inputs["patch"]),
        headers={"Content-Type": content_type},
    )
    if response.status_code != 200:
        raise _failed(response, f"patch {inputs['kind']} {inputs['name']}")
    return {
        "name": inputs["name"],
        "namespace": namespace or "",
        "resourceVersion": response.json()["metadata"]["resourceVersion"],
    }


async def delete(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    gw = _gateway(inv)
    path, _ = await _path(gw, inv, inputs["apiVersion"], inputs["kind"], inputs["name"], inputs.get("namespace"))
    before = await _snapshot(gw, inv, inputs)
    if before is None:
        return {"existed": False}
    response = await gw.call(inv, "DELETE", path)
    if response.status_code not in (200, 202, 404):
        raise _failed(response, f"delete {inputs['kind']} {inputs['name']}")
    return {"existed": True}


async def get(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    gw = _gateway(inv)
    path, _ = await _path(gw, inv, inputs["apiVersion"], inputs["kind"], inputs["name"], inputs.get("namespace"))
    response = await gw.call(inv, "GET", path)
    if response.status_code == 404:
        return {"exists": False}
    if response.status_code != 200:
        raise _failed(response, f"get {inputs['kind']} {inputs['name']}")
    obj = response.json()
    obj.get("metadata", {}).pop("managedFields", None)
    return {"exists": True, "object": obj}


def _dig(obj: Any, dotted: str) -> Any:
    for part in dotted.strip(".").split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


async def wait(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + float(inputs.get("timeoutSeconds", 60))
    last = "not found"
    while time.monotonic() < deadline:
        found = await get(inputs, inv)
        if found["exists"]:
            obj = found["object"]
            if "condition" in inputs:
                conditions = (obj.get("status") or {}).get("conditions") or []
                match = [c for c in conditions if c.get("type") == inputs["condition"]]
                if match and match[0].get("status") == "True":
                    return {"waitedSeconds": round(time.monotonic() - started, 2)}
                last = f"condition {inputs['condition']} is {match[0].get('status') if match else 'absent'}"
            else:
                value = _dig(obj, inputs["path"])
                if value == inputs["value"]:
                    return {"waitedSeconds": round(time.monotonic() - started, 2)}
                last = f"{inputs['path']} is {value!r}"
        await asyncio.sleep(0.5)
    raise CapabilityError(
        f"{inputs['kind']} {inputs['name']}: gave up after {inputs.get('timeoutSeconds', 60)} s ({last})"
    )


async def restore(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    gw = _gateway(inv)
    file = _snapshot_file(inv, inputs["snapshot"])
    if not file.exists():
        return {"restored": False}  # the change never happened
    record = json.loads(file.read_text())
    path, _ = await _path(gw, inv, record["apiVersion"], record["kind"], record["name"], record["namespace"])
    before = record["object"]
    if before is None:
        response = await gw.call(inv, "DELETE", path)
        if response.status_code not in (200, 202, 404):
            raise _failed(response, f"delete {record['kind']} {record['name']}")
        return {"restored": True}
    body = {k: v for k, v in before.items() if k != "status"}
    body["metadata"] = {k: v for k, v in before["metadata"].items() if k not in SERVER_FIELDS}
    current = await gw.call(inv, "GET", path)
    if current.status_code == 200:
        body["metadata"]["resourceVersion"] = current.json()["metadata"]["resourceVersion"]
        response = await gw.call(
            inv, "PUT", path, content=json.dumps(body), headers={"Content-Type": "application/json"}
        )
    else:
        response = await gw.call(
            inv, "POST", path.rsplit("/", 1)[0], content=json.dumps(body), headers={"Content-Type": "application/json"}
        )
    if response.status_code not in (200, 201):
        raise _failed(response, f"restore {record['kind']} {record['name']}")
    return {"restored": True}


HANDLERS: dict[str, Handler] = {
    "k8s.apply": apply,
    "k8s.patch": patch,
    "k8s.delete": delete,
    "k8s.get": get,
    "k8s.wait": wait,
    "k8s.restore": restore,
}
