"""`airun operator`: runs kopf against the cluster of KUBECONFIG."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from kubernetes_asyncio import client

from controller.audit.store import AuditStore
from controller.audit.writer import AuditWriter
from controller.capabilities import registry as capability_registry
from controller.capabilities.egress import EgressRules
from controller.engine import templating
from controller.observability import logs
from controller.operator import admission, handlers, health, kube
from controller.operator.notify import Notifier
from controller.operator.runtime import RuntimeSettings, WorkflowRuntime, workspaces_from_env
from controller.operator.template_sandbox import TemplateSandbox

WEBHOOK_CONFIGURATION = "airun.aifirst.dev"
log = logging.getLogger("airun.operator")


@dataclass
class OperatorOptions:
    kubeconfig: str | None = None
    context: str | None = None
    health_port: int = 8081
    bind: str = "127.0.0.1"
    verbose: bool = False
    workspaces: str | None = None
    test_capabilities: bool = False
    webhook_port: int | None = None
    webhook_host: str | None = None
    webhook_cert: str | None = None
    webhook_key: str | None = None
    webhook_ca: str | None = None
    # False: the webhook configurations belong to someone else (the Helm chart, with a Service client config);
    # the operator only serves them. True: kopf writes them with a URL client config (the local environment).
    webhook_managed: bool = True
    notify_secret_file: str | None = None
    metrics_port: int | None = None
    audit_url: str | None = None


def _configure(settings: kopf.OperatorSettings, options: OperatorOptions) -> None:
    # kopf's defaults suit slow, few objects; these suit many short-lived ones (see NOTES.md).
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.queueing.error_delays = (1, 1, 2, 3, 5, 8, 13)
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "airun-operator"
    settings.posting.event_name_prefix = "airun-"
    if options.webhook_port:
        settings.admission.server = kopf.WebhookServer(
            addr=options.bind,
            port=options.webhook_port,
            host=options.webhook_host or options.bind,
            certfile=options.webhook_cert,
            pkeyfile=options.webhook_key,
            cafile=options.webhook_ca,
        )
        settings.admission.managed = WEBHOOK_CONFIGURATION if options.webhook_managed else None


async def whoami(connection: kube.Connection) -> str:
    """The operator's own user name, as the API server authenticates it."""
    review = await client.AuthenticationV1Api(connection.api).create_self_subject_review(
        client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
    )
    return str(review.status.user_info.username)


async def run(options: OperatorOptions) -> None:
    capabilities = capability_registry.load(include_test=options.test_capabilities)
    connection = await kube.connect(options.kubeconfig, options.context)
    registry = kopf.OperatorRegistry()
    workspaces = Path(options.workspaces) if options.workspaces else workspaces_from_env()
    if options.notify_secret_file:
        secret = Path(options.notify_secret_file).read_bytes().strip()  # noqa: ASYNC240  (once, at start-up)
    else:
        secret = secrets.token_bytes(32)
        log.warning("no --notify-secret-file: approval notifications are signed with a throw-away key")
    notifier = Notifier(secret, EgressRules.from_env())
    store = None
    if options.audit_url:
        store = AuditStore(options.audit_url)
        store.migrate()  # once, at start-up, before anything else runs
    audit = AuditWriter(store)
    # Templates that do more than read values render in worker processes that can be stopped.
    sandbox = TemplateSandbox().start()
    templating.install(sandbox)
    runtime = WorkflowRuntime(connection, capabilities, RuntimeSettings(workspaces=workspaces), notifier, audit)
    bind = handlers.register(registry, runtime)
    if options.webhook_port:
        admission.register(registry, runtime, operator_user=await whoami(connection), bind=bind)
    else:
        log.warning("no --webhook-port: principals and approvers are not recorded from authentication")

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        _configure(settings, options)

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return await connection.connection_info()

    if options.metrics_port:
        runtime.metrics.serve(options.metrics_port, options.bind)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = asyncio.Event()
    probes = await health.serve(options.bind, options.health_port, ready)
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=True,
            standalone=True,  # peering needs kopf's own CRDs; run one replica (leader election: chart)
            stop_flag=stop,
            ready_flag=ready,
        )
    finally:
        await probes.cleanup()
        await runtime.shutdown()
        templating.install(None)
        sandbox.close()
        await notifier.close()
        audit.close()
        await connection.close()


def main(options: OperatorOptions) -> None:
    logs.configure(verbose=options.verbose)
    asyncio.run(run(options))
