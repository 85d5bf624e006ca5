"""Keeps track of the workflows the operator has seen and checkpoints them in .status."""

from __future__ import annotations

from typing import Any

import kopf

from controller.operator.kube import Connection


class WorkflowRuntime:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    async def observe(self, body: kopf.Body) -> None:
        status: dict[str, Any] = dict(body.get("status") or {})
        if status.get("phase"):
            return
        steps = body.get("spec", {}).get("steps", [])
        await self.connection.patch_workflow_status(
            body.metadata.namespace or "",
            body.metadata.name or "",
            {
                "status": {
                    "phase": "Pending",
                    "observedGeneration": body.metadata.get("generation"),
                    "progress": f"0/{len(steps)}",
                    "steps": [{"name": s["name"], "phase": "Pending"} for s in steps],
                }
            },
        )

    def forget(self, body: kopf.Body) -> None:
        pass
