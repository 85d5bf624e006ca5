"""The snapshots of finished workflows, which the operator no longer watches (FINISHED_LABEL).

kopf watches only workflows without the finished label, so a restart lists only those with work left. A
finished workflow keeps its snapshots (a rollback restores from them) until it is deleted, and that
deletion is seen here: a watch of the finished ones that starts from the resourceVersion of a sweep's list
instead of listing them into memory, and that on each DELETED event reads the workflow back (the API server
sends DELETED too when a workflow leaves the selector: a rollback removes the label). The sweep (every
workflow's uid, listed in pages) removes the snapshots of any workflow that does not exist: at start, for
those deleted while the operator was down, and whenever the watch's resourceVersion is too old (410).

Any replica may do this: removing snapshots is idempotent, and the sweep keeps folders changed since its list
(another replica's runner may be writing them for a workflow created after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes_asyncio import watch
from kubernetes_asyncio.client.exceptions import ApiException

from controller import API_GROUP, API_VERSION
from controller.api.metadata import FINISHED_LABEL
from controller.capabilities import snapshots
from controller.operator import kube

METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
PAGE = 500  # workflows per page of the sweep's LIST (its memory stays bounded with many)
WATCH_SECONDS = 300  # one watch request's length (server side); the next goes on from its resourceVersion
RETRY_SECONDS = 5.0  # after an error (the API server restarting, say)
log = logging.getLogger("airun.finished")


async def live_workflows(connection: kube.Connection) -> tuple[list[str], str]:
    """The uid of every Workflow of the cluster (finished ones included), listed in pages, and the
    resourceVersion of that list."""
    uids: list[str] = []
    token: str | None = None
    version = ""
    while True:
        query: list[tuple[str, Any]] = [("limit", PAGE)] + ([("continue", token)] if token else [])
        # Metadata only (PartialObjectMetadataList): a tenth of the bytes, and of the operator's memory.
        page: Any = await connection.api.call_api(
            "/apis/{group}/{version}/{plural}",
            "GET",
            {"group": API_GROUP, "version": API_VERSION, "plural": "workflows"},
            query,
            {"Accept": METADATA_ONLY},
            response_types_map={200: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )
        uids += [item["metadata"]["uid"] for item in page.get("items") or []]
        metadata = page.get("metadata") or {}
        version = version or str(metadata.get("resourceVersion") or "")  # the first page's: the snapshot's
        token = metadata.get("continue")
        if not token:
            return uids, version


async def sweep(connection: kube.Connection, workspaces: Path) -> str:
    """Removes the snapshots of every workflow that does not exist; returns the resourceVersion listed."""
    listed_at = time.time()
    uids, version = await live_workflows(connection)
    await asyncio.to_thread(snapshots.sweep, workspaces, uids, listed_at)
    return version


class FinishedWatch:
    def __init__(self, connection: kube.Connection, workspaces: Path) -> None:
        self.connection = connection
        self.workspaces = workspaces
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name="finished workflows")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def run(self) -> None:
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await sweep(self.connection, self.workspaces)
                version = await self._watch(version)
            except asyncio.CancelledError:
                raise
            except ApiException as error:
                if error.status == 410:  # too old to go on from: sweep again, then watch from there
                    version = None
                    continue
                log.warning(
                    "watching finished workflows: %s %s; again in %.0f s", error.status, error.reason, RETRY_SECONDS
                )
                await asyncio.sleep(RETRY_SECONDS)
            except Exception as error:  # the connection dropped: go on from the last version seen
                log.warning("watching finished workflows: %s; again in %.0f s", type(error).__name__, RETRY_SECONDS)
                await asyncio.sleep(RETRY_SECONDS)

    async def _watch(self, version: str) -> str:
        """One watch request from VERSION; returns the last resourceVersion it saw."""
        async with watch.Watch() as stream:
            async for event in stream.stream(
                self.connection.custom.list_cluster_custom_object,
                API_GROUP,
                API_VERSION,
                "workflows",
                label_selector=FINISHED_LABEL,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS,
            ):
                body = event.get("raw_object") or {}  # an ERROR event (410: too old) is raised by the client
                version = str((body.get("metadata") or {}).get("resourceVersion") or version)
                if event.get("type") == "DELETED":
                    await self._collect_if_deleted(body)
        return version

    async def _collect_if_deleted(self, body: Mapping[str, Any]) -> None:
        metadata = body.get("metadata") or {}
        namespace, name, uid = metadata.get("namespace") or "", metadata.get("name") or "", metadata.get("uid") or ""
        try:
            fresh = await self.connection.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, "workflows", name
            )
            if (fresh.get("metadata") or {}).get("uid") == uid:
                return  # it left the selector (a rollback): the operator's watch has it again
        except ApiException as error:
            if error.status != 404:
                raise
        snapshots.collect(self.workspaces / namespace, uid)
