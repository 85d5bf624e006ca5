"""The isolated renderer of templates: worker processes that can be stopped.

A thread cannot be stopped, a process can: every template that is not trivially safe (see
controller.engine.templating) is rendered in a small pool of worker processes (pebble) with a time limit
per render (the worker is killed when it runs over and a new one takes its place), an output cap, and
an address-space limit set in each worker. Workers start from a fresh interpreter (forkserver), never
forked from the operator's threaded asyncio process.

Rendering blocks the calling thread: callers on the event loop run it in a worker thread."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import logging
import multiprocessing
import os
import resource
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pebble

from controller.engine import templating
from controller.engine.templating import TemplateError

TIME_LIMIT_SECONDS = 2.0
MEMORY_LIMIT_BYTES = 512 * 1024 * 1024  # address space of one worker: the interpreter plus room for a render
WORKERS = 2
PR_SET_PDEATHSIG = 1  # prctl(2)
log = logging.getLogger("airun.templates")


def _prepare_worker(memory_bytes: int) -> None:
    """Runs in each worker as it starts: caps its address space, and ties its life to its parent's (the
    fork server, which exits with the operator), so a render in progress never outlives a killed
    operator."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent is already gone
            os._exit(0)


def _render_in_worker(source: str, context: Mapping[str, Any], keep_types: bool) -> tuple[bool, Any]:
    """(True, value) or (False, message): only plain data crosses the process boundary."""
    try:
        return True, templating.render_source(source, context, keep_types=keep_types)
    except TemplateError as error:
        return False, str(error)
    except MemoryError:
        return False, "the template needed more memory than allowed"


def _start_context() -> Any:
    """forkserver where there is one: workers fork from a small clean server that has imported the
    renderer (and not the operator's __main__, which the default preload would import again)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


class TemplateSandbox:
    """An IsolatedRenderer (controller.engine.templating) backed by a pool of worker processes."""

    def __init__(
        self,
        workers: int = WORKERS,
        time_limit: float = TIME_LIMIT_SECONDS,
        memory_bytes: int = MEMORY_LIMIT_BYTES,
    ) -> None:
        self.workers = workers
        self.time_limit = time_limit
        self.memory_bytes = memory_bytes
        self._pool: pebble.ProcessPool | None = None
        self._lock = threading.Lock()

    def start(self) -> TemplateSandbox:
        """Starts the workers now (else at the first render)."""
        self._ensure_pool()
        return self

    def _ensure_pool(self) -> pebble.ProcessPool:
        with self._lock:
            if self._pool is None or not self._pool.active:
                self._pool = pebble.ProcessPool(
                    max_workers=self.workers,
                    initializer=_prepare_worker,
                    initargs=(self.memory_bytes,),
                    context=_start_context(),
                )
            return self._pool

    def render(self, source: str, context: Mapping[str, Any], *, keep_types: bool) -> Any:
        future = self._ensure_pool().schedule(
            _render_in_worker, args=(source, dict(context), keep_types), timeout=self.time_limit
        )
        try:
            ok, value = future.result()
        except concurrent.futures.TimeoutError:
            raise TemplateError(f"the template did not finish within {self.time_limit:g} s") from None
        except pebble.ProcessExpired as error:
            # Killed from outside (the kernel's OOM killer) or crashed: the pool starts another worker.
            raise TemplateError(f"the template's worker process died ({error})") from None
        except Exception as error:  # the context could not be sent (not plain data), or the pool is closed
            log.warning("isolated render failed: %s: %s", type(error).__name__, error)
            raise TemplateError(f"the template could not be rendered in isolation: {type(error).__name__}") from None
        if not ok:
            raise TemplateError(value)
        return value

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.stop()  # type: ignore[no-untyped-call]
                self._pool.join(timeout=5)
                self._pool = None

    def __enter__(self) -> TemplateSandbox:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@contextlib.contextmanager
def installed(workers: int = WORKERS) -> Iterator[TemplateSandbox]:
    """A TemplateSandbox installed as the isolated renderer for the block (its workers start at the
    first template that needs them, so a block that needs none costs nothing)."""
    with TemplateSandbox(workers=workers) as sandbox:
        previous = templating.install(sandbox)
        try:
            yield sandbox
        finally:
            templating.install(previous)
