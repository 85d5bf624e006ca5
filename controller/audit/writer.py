"""Writes audit records off the event loop, in order (one writer thread), without ever failing a
workflow: an audit store that is down is logged and counted, and the workflow goes on."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from controller.audit.store import AuditStore

log = logging.getLogger("airun.audit")


class AuditWriter:
    def __init__(self, store: AuditStore | None) -> None:
        self.store = store
        self.failures = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")

    def record(self, kind: str, *, namespace: str, workflow: str, workflow_uid: str, **fields: Any) -> None:
        if self.store is None:
            return
        self._executor.submit(self._append, kind, namespace, workflow, workflow_uid, fields)

    def _append(self, kind: str, namespace: str, workflow: str, workflow_uid: str, fields: dict[str, Any]) -> None:
        assert self.store is not None
        try:
            self.store.append(kind, namespace=namespace, workflow=workflow, workflow_uid=workflow_uid, **fields)
        except Exception:
            self.failures += 1
            log.exception("audit record %s of %s/%s was not written", kind, namespace, workflow)

    def close(self) -> None:
        self._executor.shutdown(wait=True)  # flush what is queued
