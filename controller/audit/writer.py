"""Writes audit records off the event loop, in order, batched (one transaction per batch, so one disk
flush for many records), without ever failing a workflow: an audit store that is down is logged and
counted, and the workflow goes on."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from controller.audit.store import AuditStore

log = logging.getLogger("airun.audit")
BATCH = 500


class AuditWriter:
    def __init__(self, store: AuditStore | None) -> None:
        self.store = store
        self.failures = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        if store is not None:
            self._thread = threading.Thread(target=self._work, name="audit-writer", daemon=True)
            self._thread.start()

    def record(self, kind: str, *, namespace: str, workflow: str, workflow_uid: str, **fields: Any) -> None:
        if self.store is not None:
            self._queue.put(
                {"kind": kind, "namespace": namespace, "workflow": workflow, "workflow_uid": workflow_uid, **fields}
            )

    def _work(self) -> None:
        assert self.store is not None
        while True:
            first = self._queue.get()
            batch = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            entries = [e for e in batch if e is not None]
            if entries:
                try:
                    self.store.append_many(entries)
                except Exception:
                    self.failures += len(entries)
                    log.exception("%d audit records were not written", len(entries))
            if None in batch:
                return

    def close(self) -> None:
        """Writes what is queued, then stops."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
