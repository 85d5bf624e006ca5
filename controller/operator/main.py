"""`airun operator`: runs kopf against the cluster of KUBECONFIG."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf

from controller.capabilities import registry as capability_registry
from controller.operator import handlers, kube
from controller.operator.runtime import RuntimeSettings, WorkflowRuntime, workspaces_from_env


@dataclass
class OperatorOptions:
    kubeconfig: str | None = None
    context: str | None = None
    health_port: int = 8081
    bind: str = "127.0.0.1"
    verbose: bool = False
    workspaces: str | None = None
    test_capabilities: bool = False


def _configure(settings: kopf.OperatorSettings) -> None:
    # kopf's defaults suit slow, few objects; these suit many short-lived ones (see NOTES.md).
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.error_delays = (1, 1, 2, 3, 5, 8, 13)
    settings.posting.level = logging.WARNING


async def run(options: OperatorOptions) -> None:
    capabilities = capability_registry.load(include_test=options.test_capabilities)
    connection = await kube.connect(options.kubeconfig, options.context)
    registry = kopf.OperatorRegistry()
    workspaces = Path(options.workspaces) if options.workspaces else workspaces_from_env()
    runtime = WorkflowRuntime(connection, capabilities, RuntimeSettings(workspaces=workspaces))
    handlers.register(registry, runtime)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        _configure(settings)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection.connection_info()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=True,
            standalone=True,  # peering needs kopf's own CRDs; run one replica (leader election: chart)
            liveness_endpoint=f"http://{options.bind}:{options.health_port}/healthz",
            stop_flag=stop,
        )
    finally:
        await runtime.shutdown()
        await connection.close()


def main(options: OperatorOptions) -> None:
    logging.basicConfig(
        level=logging.DEBUG if options.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    asyncio.run(run(options))
