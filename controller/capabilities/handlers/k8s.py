"""k8s.* handlers: the Kubernetes API through httpx, impersonating the workflow's principal.

Every target (apiVersion, kind, name, namespace) is checked before it becomes part of a URL: an empty
name would address the whole collection, `x/scale` a subresource, `..` or `%2F` another path. Discovery
(which resource serves a kind) goes through the same impersonated connection as the call, so the
principal's own rights are what count, and is cached per principal for DISCOVERY_TTL seconds.

Snapshots (the object before the change, for k8s.restore) live under the workspace's reserved folder,
one folder per workflow uid (collected with the workflow: controller.capabilities.snapshots). A
Secret's snapshot is sealed (Fernet) with the operator's snapshot key; without a key, Secrets are not
snapshotted and a step that would change one fails before it does.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cachetools import TTLCache
from cryptography.fernet import Fernet, InvalidToken

from controller.capabilities import snapshots
from controller.capabilities.base import CapabilityError, Handler, Invocation

FIELD_MANAGER = "airun"
PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
# Server-populated fields that a restore must not send back.
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "selfLink")
DISCOVERY_TTL = 300.0  # seconds; new CRDs show up after at most this long
DISCOVERY_ENTRIES = 1024  # (principal, apiVersion) pairs kept

# The same rules as the JSON Schemas of capabilities/k8s.yaml (kept in step by a unit test).
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
# A DNS-1123 subdomain; ':' is allowed too because RBAC objects are named so (system:aggregate-to-edit).
NAME = re.compile(r"^[a-z0-9]([-a-z0-9:]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9:]*[a-z0-9])?)*$")
NAMESPACE = re.compile(f"^{_LABEL}$")  # a DNS-1123 label
KIND = re.compile(r"^[A-Z][A-Za-z0-9]*$")
API_VERSION = re.compile(rf"^({_LABEL}(\.{_LABEL})*/)?v[0-9]+((alpha|beta)[0-9]+)?$")
NAME_LENGTH, NAMESPACE_LENGTH, KIND_LENGTH, API_VERSION_LENGTH = 253, 63, 63, 317


def _refused(what: str, value: str, why: str) -> CapabilityError:
    return CapabilityError(f"{what} {value!r} {why}", retryable=False)


def check_target(api_version: Any, kind: Any, name: Any, namespace: Any = None) -> None:
    """Refuses, with the reason, any target that is not exactly one object: each part must be a single,
    valid path segment of the API (CapabilityError, not retryable)."""
    for what, value in (("apiVersion", api_version), ("kind", kind), ("name", name)):
        if not isinstance(value, str) or not value:
            raise _refused(what, str(value or ""), "is empty (it would address a whole collection)")
    if namespace is not None and not isinstance(namespace, str):
        raise _refused("namespace", str(namespace), "is not a string")
    for what, value in (("name", name), ("namespace", namespace or "")):
        if "/" in value:
            raise _refused(what, value, "contains '/' (a subresource or another path): name one object")
        if "%" in value or value in (".", "..") or ".." in value:
            raise _refused(what, value, "is a path trick ('%', '.', '..'): refused")
    if len(name) > NAME_LENGTH or not NAME.match(name):
        raise _refused("name", name, "is not a DNS-1123 subdomain (lower-case letters, digits, '-', '.')")
    if namespace and (len(namespace) > NAMESPACE_LENGTH or not NAMESPACE.match(namespace)):
        raise _refused("namespace", namespace, "is not a DNS-1123 label (lower-case letters, digits, '-')")
    if len(kind) > KIND_LENGTH or not KIND.match(kind):
        raise _refused("kind", kind, "is not a kind (CamelCase letters and digits, as in ConfigMap)")
    if len(api_version) > API_VERSION_LENGTH or not API_VERSION.match(api_version):
        raise _refused("apiVersion", api_version, "is not an apiVersion (v1, or group/version as in apps/v1)")


@dataclass
class KubeGateway:
    """The operator's connection, used on behalf of principals (Impersonate-User/Group headers)."""

    server: str
    ssl_context: ssl.SSLContext
    token: Callable[[], Awaitable[str | None]] | None = None  # asked per request: tokens rotate
    # Seals Secret snapshots; None: Secrets are never snapshotted, so steps that change one fail first.
    snapshot_cipher: Fernet | None = None
    _client: httpx.AsyncClient | None = None
    # (principal, groups, apiVersion) -> {kind: (plural, namespaced)}: what that principal's discovery said.
    _resources: TTLCache[tuple[str, tuple[str, ...], str], dict[str, tuple[str, bool]]] = field(
        default_factory=lambda: TTLCache(maxsize=DISCOVERY_ENTRIES, ttl=DISCOVERY_TTL)
    )

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

    async def resource(self, inv: Invocation, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of a kind, from the API server's discovery as the principal sees it."""
        key = (inv.principal, tuple(sorted(inv.groups)), api_version)
        resources = self._resources.get(key)
        if resources is None:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            response = await self.call(inv, "GET", path)
            if response.status_code == 404:
                raise CapabilityError(f"unknown apiVersion {api_version}", retryable=False)
            if response.status_code in (401, 403):
                raise _failed(response, f"discovery of {api_version} as {inv.principal}")
            if response.status_code != 200:
                raise _failed(response, f"discovery of {api_version}")
            resources = {
                r["kind"]: (r["name"], r["namespaced"]) for r in response.json()["resources"] if "/" not in r["name"]
            }
            self._resources[key] = resources
        found = resources.get(kind)
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
    check_target(api_version, kind, name, namespace)
    plural, namespaced = await gw.resource(inv, api_version, kind)
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
    return snapshots.k8s_file(inv.workspace, inv.workflow_uid, key)


def _seal(gw: KubeGateway, record: dict[str, Any]) -> dict[str, Any]:
    """A Secret's snapshot keeps its object only encrypted: its data never rests on disk in clear."""
    if record["kind"] != "Secret" or record["object"] is None:
        return record
    if gw.snapshot_cipher is None:
        raise CapabilityError(
            f"Secret {record['name']}: no snapshot key (--snapshot-key-file), so it cannot be snapshotted for "
            "compensation in a safe way; refused before any change",
            retryable=False,
        )
    sealed = gw.snapshot_cipher.encrypt(json.dumps(record["object"]).encode()).decode()
    return {**record, "object": None, "sealed": sealed}


def _unseal(gw: KubeGateway, record: dict[str, Any]) -> Any:
    if "sealed" not in record:
        return record["object"]
    if gw.snapshot_cipher is None:
        raise CapabilityError(f"the snapshot of {record['name']} is sealed and no snapshot key is set", retryable=False)
    try:
        return json.loads(gw.snapshot_cipher.decrypt(record["sealed"].encode()))
    except InvalidToken as error:
        raise CapabilityError(
            f"the snapshot of {record['name']} was sealed with another key: it cannot be restored", retryable=False
        ) from error


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
        await asyncio.to_thread(snapshots.atomic_write, file, json.dumps(_seal(gw, record)).encode())
    return before


# -- handlers -------------------------------------------------------------------------------------------


async def apply(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    gw = _gateway(inv)
    manifest = dict(inputs["manifest"])
    meta = dict(manifest["metadata"])
    check_target(manifest.get("apiVersion"), manifest.get("kind"), meta.get("name"), meta.get("namespace"))
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
    file = snapshots.find_k8s_file(inv.workspace, inv.workflow_uid, inputs["snapshot"])
    if file is None:
        if inv.forward_in_doubt:
            return {"restored": False}  # the step was cut off before its snapshot: the change never happened
        # The step completed, so its snapshot was written before its change: it is gone (a lost volume,
        # someone's cleanup). Saying "compensated" would be a lie.
        raise CapabilityError(
            f"the snapshot {inputs['snapshot']} of a completed step is missing: nothing to restore from; "
            "a person must put the object back",
            retryable=False,
        )
    record = json.loads(file.read_text())
    path, _ = await _path(gw, inv, record["apiVersion"], record["kind"], record["name"], record["namespace"])
    before = _unseal(gw, record)
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
