"""Thin kopf handlers: they hand what the cluster says to the workflow runtime, and nothing more."""

from __future__ import annotations

from typing import Any

import kopf

from controller import API_GROUP, API_VERSION
from controller.operator.runtime import WorkflowRuntime


def register(registry: kopf.OperatorRegistry, runtime: WorkflowRuntime) -> None:
    # on.event, not on.create/on.update: kopf's change-detecting handlers persist their progress with a
    # PATCH per handler, which would double the writes per step. The runtime keeps its own checkpoint
    # in .status (see docs/architecture.md).
    @kopf.on.event(API_GROUP, API_VERSION, "workflows", registry=registry)
    async def workflow_event(type: str, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            runtime.forget(body)
            return
        await runtime.observe(body)
