"""Which Secrets of the operator's namespace exist, and their key names: for the Ready condition of the
Capabilities whose endpoint authenticates with one (spec.http.auth.secretRef, reason SecretMissing).

A watch of that one namespace, not a periodic re-check: a Capability applied before its Secret (Argo CD and
Flux apply in their own order) turns ready as soon as the Secret appears, and not ready as soon as it goes,
with no polling interval to wait for nor GETs to spend on every referenced Secret. Not kopf: kopf watches
every resource of an operator with the same namespaces, and this operator is clusterwide, so a kopf watch of
Secrets would need list/watch on Secrets of every namespace. This one runs with a Role of the operator's
namespace only (rbac/roles.yaml, airun-operator-credentials: get, list, watch). list and watch add no read
access to `get`, which that Role already granted on every Secret there; they add being told of changes.

Only key names are kept (custom.Credentials.keys), never a value, and nothing of a Secret is logged but its
name. A Secret that changes or goes is also dropped from the credential cache, so a rotation takes effect
at the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from controller.capabilities.custom import Credentials

RELIST_SECONDS = 300  # a watch ends after this long (server side) and starts again from a fresh list
RETRY_SECONDS = 5.0  # after an error (the API server restarting, say)
FIRST_LIST_SECONDS = 10.0  # how long start-up waits for the first list before kopf handles Capabilities
log = logging.getLogger("airun.credentials")

Changed = Callable[[str], Awaitable[None]]


def key_names(secret: Mapping[str, Any]) -> frozenset[str]:
    """The key names of a Secret as the API serves it (stringData is merged into data by the API server)."""
    return frozenset((secret.get("data") or {}).keys())


def name_of(secret: Mapping[str, Any]) -> str:
    return str((secret.get("metadata") or {}).get("name") or "")


def changes(before: Mapping[str, frozenset[str]] | None, after: Mapping[str, frozenset[str]]) -> list[str]:
    """The Secrets whose presence or key names differ between two views (all of AFTER's when BEFORE is
    unknown). Pure."""
    if before is None:
        return sorted(after)
    return sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))


class CredentialWatch:
    """Keeps CREDENTIALS.keys up to date with the Secrets of CREDENTIALS.namespace, and calls CHANGED with the
    name of each Secret that appeared, changed its keys, or went."""

    def __init__(self, api: client.ApiClient, credentials: Credentials, changed: Changed) -> None:
        self.core = client.CoreV1Api(api)
        self.credentials = credentials
        self.changed = changed
        self.listed = asyncio.Event()  # set after the first list, or once listing was refused
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name="credential watch")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _tell(self, names: list[str]) -> None:
        for name in names:
            self.credentials.forget(name)
            try:
                await self.changed(name)
            except Exception:  # a failed status write must not stop the watch: the next event writes again
                log.exception("re-evaluating the capabilities that name Secret %s", name)

    async def _list(self) -> str:
        # Not preloaded: kubernetes_asyncio logs every preloaded response body at debug level, which here
        # holds every Secret's values (and kubectl's last-applied annotation, their stringData in clear).
        # The watch itself never preloads.
        response: Any = await self.core.list_namespaced_secret(self.credentials.namespace, _preload_content=False)
        try:
            if response.status != 200:
                raise ApiException(status=response.status, reason=response.reason)
            listed = json.loads(await response.read())
        finally:
            response.release()
        keys = {name_of(s): key_names(s) for s in listed.get("items") or []}
        before, self.credentials.keys = self.credentials.keys, keys
        self.listed.set()
        await self._tell(changes(before, keys))
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    async def run(self) -> None:
        namespace = self.credentials.namespace
        refused = False
        while True:
            try:
                version = await self._list()
                refused = False
                async with watch.Watch() as stream:
                    async for event in stream.stream(
                        self.core.list_namespaced_secret,
                        namespace,
                        resource_version=version,
                        timeout_seconds=RELIST_SECONDS,
                    ):
                        await self._apply(event)
            except asyncio.CancelledError:
                raise
            except ApiException as error:
                if error.status == 403 and not refused:
                    # An older RBAC (get only): the condition cannot tell, so it claims nothing either way.
                    log.warning(
                        "may not list/watch Secrets in %s: Capabilities are not checked for their Secret "
                        "(grant the airun-operator-credentials Role list and watch)",
                        namespace,
                    )
                    refused = True
                    self.credentials.keys = None
                    self.listed.set()
                elif error.status not in (403, 410):
                    log.warning(
                        "watching Secrets of %s: %s %s; again in %.0f s",
                        namespace,
                        error.status,
                        error.reason,
                        RETRY_SECONDS,
                    )
                if error.status != 410:
                    await asyncio.sleep(RETRY_SECONDS)
            except Exception as error:  # the connection dropped: list again, and compare
                log.warning(
                    "watching Secrets of %s: %s; again in %.0f s", namespace, type(error).__name__, RETRY_SECONDS
                )
                await asyncio.sleep(RETRY_SECONDS)

    async def _apply(self, event: Mapping[str, Any]) -> None:
        secret = event.get("raw_object") or {}
        name = name_of(secret)
        keys = self.credentials.keys
        if not name or keys is None or event.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
            return
        before = keys.get(name)
        if event["type"] == "DELETED":
            keys.pop(name, None)
        else:
            keys[name] = key_names(secret)
        if keys.get(name) != before or event["type"] == "MODIFIED":  # MODIFIED: a value may have rotated
            await self._tell([name])


def register(
    registry: kopf.OperatorRegistry, api: client.ApiClient, credentials: Credentials, changed: Changed
) -> None:
    """Starts the watch with the operator, before kopf handles any Capability (so their first condition is
    told by the first list, not corrected a moment later), and stops it with the operator."""
    credential_watch = CredentialWatch(api, credentials, changed)

    @kopf.on.startup(registry=registry, id="credential_watch")
    async def start_watching(**_: Any) -> None:
        credential_watch.start()
        try:
            await asyncio.wait_for(credential_watch.listed.wait(), FIRST_LIST_SECONDS)
        except TimeoutError:
            log.warning(
                "the Secrets of %s are not listed yet: Capabilities are checked once they are", credentials.namespace
            )

    @kopf.on.cleanup(registry=registry, id="credential_watch_stop")
    async def stop_watching(**_: Any) -> None:
        await credential_watch.stop()
