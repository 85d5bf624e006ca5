"""Writes audit records off the event loop, in order, batched (one transaction per batch, so one disk
flush for many records), without ever failing a workflow: an audit store that is down is logged and
counted, and the workflow goes on.

Write-ahead: the runner awaits `durable()` before each checkpoint of a workflow's status, so a transition
that is checkpointed always has its records in the store, even when the operator is killed right after."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any

from controller.api.audit import AuditKind
from controller.audit.store import AuditStore

log = logging.getLogger("airun.audit")
BATCH = 500
DURABLE_TIMEOUT = 5.0


class AuditWriter:
    def __init__(self, store: AuditStore | None) -> None:
        self.store = store
        self.failures = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._queued = 0  # records handed to the writer (counted on the event loop)
        self._handled = 0  # records written, or given up on (counted by the writer thread)
        self._lock = threading.Lock()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._thread: threading.Thread | None = None
        if store is not None:
            self._thread = threading.Thread(target=self._work, name="audit-writer", daemon=True)
            self._thread.start()

    def record(self, kind: AuditKind, *, namespace: str, workflow: str, workflow_uid: str, **fields: Any) -> None:
        if self.store is not None:
            self._queued += 1
            self._queue.put(
                {
                    "kind": str(kind),  # any kind is stored (the store is a log); AuditKind names ours
                    "namespace": namespace,
                    "workflow": workflow,
                    "workflow_uid": workflow_uid,
                    **fields,
                }
            )

    async def durable(self) -> None:
        """Returns once every record handed over so far is in the store (or its write failed and was logged)."""
        if self.store is None:
            return
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._handled >= self._queued:
                return
            self._waiters.append((self._queued, future))
        try:
            await asyncio.wait_for(future, DURABLE_TIMEOUT)
        except TimeoutError:  # a store that hangs must not stall workflows: log it and go on
            log.warning("the audit store did not confirm records within %s s; going on", DURABLE_TIMEOUT)

    def _handled_up_to(self, count: int) -> None:
        with self._lock:
            self._handled = count
            ready = [f for target, f in self._waiters if target <= count]
            self._waiters = [(target, f) for target, f in self._waiters if target > count]
        for future in ready:
            future.get_loop().call_soon_threadsafe(_resolve, future)

    def _work(self) -> None:
        assert self.store is not None
        handled = 0
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
                    _, lost = self.store.append_isolated(entries)
                except Exception:  # never let the writer thread die: it would block durable() forever
                    lost = len(entries)
                    log.exception("%d audit records were not written", len(entries))
                if lost:
                    self.failures += lost
                    log.error("%d audit records were not written", lost)
                handled += len(entries)
                self._handled_up_to(handled)
            if None in batch:
                return

    def close(self) -> None:
        """Writes what is queued, then stops."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # the waiting runner may have been cancelled meanwhile
        future.set_result(None)
