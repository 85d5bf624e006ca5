"""`airun operator`: runs kopf against the cluster of KUBECONFIG."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from kopf._cogs.structs.bodies import BodyEssence
from kopf._cogs.structs.dicts import FieldSpec
from kubernetes_asyncio import client

from controller import API_GROUP
from controller.api.metadata import UNFINISHED_SELECTOR
from controller.audit.store import AuditStore
from controller.audit.writer import AuditWriter
from controller.capabilities import custom as custom_capabilities
from controller.capabilities import registry as capability_registry
from controller.capabilities import secrets as secret_refs
from controller.capabilities.egress import EgressRules
from controller.engine import templating
from controller.observability import logs
from controller.operator import (
    admission,
    attestation,
    controlplane,
    finished,
    handlers,
    health,
    kube,
    shards,
    transactions,
    webhooks,
)
from controller.operator.notify import Notifier, policy_urls
from controller.operator.runtime import RuntimeSettings, WorkflowRuntime, workspaces_from_env
from controller.operator.template_sandbox import TemplateSandbox

WEBHOOK_CONFIGURATION = "airun.aifirst.dev"  # the default of --webhook-configuration
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
    attestation_key_file: str | None = None
    webhook_configuration: str = WEBHOOK_CONFIGURATION
    snapshot_key_file: str | None = None
    metrics_port: int | None = None
    audit_url: str | None = None
    # Where the credentials of custom Capability endpoints live (default: the Pod's namespace, or airun-system)
    operator_namespace: str | None = None
    shutdown_grace_seconds: float = 25.0
    shards: int = 0  # 0: no Leases, this process runs every workflow
    identity: str | None = None
    lease_seconds: float = 15.0


class NoEssence(kopf.DiffBaseStorage):
    """kopf computes the "essence" of every body at every watch event (a deep copy of the whole object,
    status included, and then some) for its change-detecting handlers (on.create/update/field, daemons),
    which diff it against the last handled one. The operator has none of those (on.event, indexes and
    webhooks only): with them absent the essence is never read, and an empty one costs nothing."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[FieldSpec] | None = None) -> BodyEssence:
        return {}

    def fetch(self, *, body: kopf.Body) -> BodyEssence | None:
        return {}

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: BodyEssence) -> None:
        return None


def change_detecting(registry: kopf.OperatorRegistry) -> bool:
    """Whether REGISTRY has a handler that reads kopf's diff base (a changing or spawning one)."""
    return bool(registry._changing.get_all_handlers() or registry._spawning.get_all_handlers())


def _configure(
    settings: kopf.OperatorSettings,
    options: OperatorOptions,
    register: Callable[[Mapping[str, Any]], Awaitable[None]] | None = None,
    *,
    needs_essence: bool = True,
) -> None:
    # kopf's defaults suit slow, few objects; these suit many short-lived ones (see NOTES.md).
    if not needs_essence:
        settings.persistence.diffbase_storage = NoEssence()
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.queueing.error_delays = (1, 1, 2, 3, 5, 8, 13)
    # A per-object worker keeps the last body it handled until it exits, idle: after a restart that is
    # every object listed (tens of KiB each, most of them finished workflows) for its idle timeout.
    # Our handlers are cheap and a new worker is only a task, so idle workers go after 1 s, not 5.
    settings.queueing.idle_timeout = 1.0
    # The initial LIST in pages, not as one response of every object at once (bench: restart).
    settings.watching.chunk_size = 500
    # Finished workflows are not watched (FINISHED_LABEL): a restart lists only those with work left.
    settings.watching.label_selectors[API_GROUP, "workflows"] = UNFINISHED_SELECTOR
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
        # Never kopf's manager: it knows no matchConditions. With webhook_managed the operator writes the
        # configurations itself (REGISTER, controller/operator/webhooks.py) whenever the server has its URL.
        settings.admission.managed = None
        if options.webhook_managed and register is not None:
            settings.admission.server = webhooks.RegisteringServer(settings.admission.server, register)


async def whoami(connection: kube.Connection) -> str:
    """The operator's own user name, as the API server authenticates it."""
    review = await client.AuthenticationV1Api(connection.api).create_self_subject_review(
        client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
    )
    return str(review.status.user_info.username)


def snapshot_cipher(secret: bytes) -> Fernet:
    """The cipher that seals Secret snapshots, from the operator's key file (any high-entropy secret:
    HKDF turns it into a Fernet key, so the chart's generated key and `openssl rand` both do)."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"airun k8s snapshots").derive(secret)
    return Fernet(base64.urlsafe_b64encode(derived))


def _notifier(options: OperatorOptions) -> Notifier:
    if options.notify_secret_file:
        secret = Path(options.notify_secret_file).read_bytes().strip()
    else:
        secret = secrets.token_bytes(32)
        log.warning("no --notify-secret-file: approval notifications are signed with a throw-away key")
    return Notifier(secret, EgressRules.from_env())


def _audit_writer(options: OperatorOptions) -> AuditWriter:
    store = None
    if options.audit_url:
        store = AuditStore(options.audit_url)
        store.migrate(isolated=True)  # once, at start-up, before anything else runs
    return AuditWriter(store)


def _runtime(
    options: OperatorOptions, connection: kube.Connection, workspaces: Path, notifier: Notifier, audit: AuditWriter
) -> WorkflowRuntime:
    """The runtime, with the keys of its options (read once, at start-up)."""
    capabilities = capability_registry.load(include_test=options.test_capabilities)
    runtime = WorkflowRuntime(connection, capabilities, RuntimeSettings(workspaces=workspaces), notifier, audit)
    runtime.attestation_key = attestation.load_key(options.attestation_key_file)
    notifier.signed_urls = lambda namespace: policy_urls(runtime.indexes.policies(), namespace)
    if options.snapshot_key_file:
        key = Path(options.snapshot_key_file).read_bytes().strip()
        runtime.kube.snapshot_cipher = snapshot_cipher(key)
    else:
        log.warning("no --snapshot-key-file: steps that change a Secret fail (its snapshot could not be sealed)")
    return runtime


async def run(options: OperatorOptions) -> None:
    if options.operator_namespace:
        custom_capabilities.CREDENTIALS.namespace = options.operator_namespace
    kube.smaller_tls_read_buffers()
    connection = await kube.connect(options.kubeconfig, options.context)
    registry = kopf.OperatorRegistry()
    workspaces = Path(options.workspaces) if options.workspaces else workspaces_from_env()
    notifier = _notifier(options)
    audit = _audit_writer(options)
    # Templates that do more than read values render in worker processes that can be stopped.
    sandbox = TemplateSandbox().start()
    templating.install(sandbox)
    runtime = _runtime(options, connection, workspaces, notifier, audit)
    finished_watch = finished.FinishedWatch(connection, workspaces)  # snapshots of deleted workflows
    finished_watch.start()
    bind = handlers.register(registry, runtime)
    agents = transactions.TransactionRuntime(runtime)
    transactions.register(registry, agents)
    if options.webhook_port:
        admission.register(registry, runtime, operator_user=await whoami(connection), bind=bind)
    else:
        log.warning("no --webhook-port: principals and approvers are not recorded from authentication")

    async def register_webhooks(client_config: Mapping[str, Any]) -> None:
        await webhooks.write(connection.api, registry, options.webhook_configuration, client_config)
        await runtime.set_webhooks_registered(True)  # now, not at the next periodic check

    leases = _shard_leases(options, connection, runtime, agents)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        _configure(settings, options, register_webhooks, needs_essence=change_detecting(registry))

    async def report(registered: bool) -> None:
        await runtime.set_webhooks_registered(registered)

    expected = webhooks.expected_names(registry, options.webhook_configuration)
    watcher = asyncio.create_task(
        webhooks.watch(connection.api, options.webhook_configuration, expected, report), name="webhook watch"
    )

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return await connection.connection_info()

    if options.metrics_port:
        runtime.metrics.serve(options.metrics_port, options.bind)

    stop = asyncio.Event()
    ready = asyncio.Event()
    signals = asyncio.create_task(
        _stop_gracefully_on_signals(runtime, leases, ready, stop, options.shutdown_grace_seconds), name="signals"
    )
    holding = asyncio.create_task(_hold_leases(leases, ready), name="shard leases") if leases else None
    probes = await health.serve(options.bind, options.health_port, ready)
    learning = asyncio.create_task(controlplane.learn(connection), name="the API server's addresses")
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=True,
            standalone=True,  # peering needs kopf's own CRDs; run one replica (leader election: chart)
            stop_flag=stop,
            ready_flag=ready,
        )
    finally:
        if holding is not None:
            holding.cancel()
        watcher.cancel()
        learning.cancel()
        await finished_watch.stop()
        signals.cancel()
        await probes.cleanup()
        await agents.shutdown()
        await runtime.shutdown()
        templating.install(None)
        sandbox.close()
        await notifier.close()
        audit.close()
        await connection.close()


def identity_of(options: OperatorOptions) -> str:
    """This replica's name in the Leases: --identity, else the Pod's name, else host name and a suffix
    (a process restarted in the same Pod keeps its shards at once; a new Pod waits for them to expire)."""
    chosen = options.identity or os.environ.get("POD_NAME")
    if not chosen:
        chosen = f"{socket.gethostname().lower()}-{secrets.token_hex(3)}"
    return shards.check_identity(chosen)


def _shard_leases(
    options: OperatorOptions,
    connection: kube.Connection,
    runtime: WorkflowRuntime,
    agents: transactions.TransactionRuntime,
) -> shards.ShardLeases | None:
    """With --shards: the Lease loop of this replica, wired to the runtimes (which then run only the
    workflows and Transactions of the shards it holds)."""
    if not options.shards:
        return None

    async def acquired(shard: int) -> None:
        await runtime.adopt_shard(shard)
        await agents.adopt_shard(shard)

    async def lost(shard: int) -> None:
        await runtime.drop_shard(shard)
        await agents.drop_shard(shard)

    async def release(shard: int) -> None:
        await runtime.park_shard(shard, options.shutdown_grace_seconds)

    leases = shards.ShardLeases(
        connection.separate_pool(),
        custom_capabilities.operator_namespace(),
        identity_of(options),
        options.shards,
        options.lease_seconds,
        shards.ShardHooks(acquired=acquired, lost=lost, release=release),
    )
    runtime.shards = leases
    connection.field_manager = leases.identity
    log.info("replica %s: %d shards, Leases of %.0f s", leases.identity, leases.count, leases.duration)
    return leases


async def _hold_leases(leases: shards.ShardLeases, ready: asyncio.Event) -> None:
    """Takes shards only once kopf runs (its handlers bind the indexes every decision needs)."""
    await ready.wait()
    await leases.run()


async def _stop_gracefully_on_signals(
    runtime: WorkflowRuntime,
    leases: shards.ShardLeases | None,
    ready: asyncio.Event,
    stop: asyncio.Event,
    grace: float,
) -> None:
    """SIGTERM or SIGINT: drain (no new step starts, attempts in flight finish within GRACE seconds and
    are checkpointed) while kopf still watches and serves the webhooks, then stop kopf. A second signal
    stops at once: what was still running is recovered from status by the next operator.
    Installed once kopf is ready: kopf installs its own handlers (an immediate stop) as it starts, and
    the last handler installed wins; before that, nothing runs that a stop could cut off."""
    await ready.wait()
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task[None]] = []

    async def drain_then_stop() -> None:
        try:
            await runtime.drain(grace)
            if leases is not None:
                await leases.stop()  # the others take the shards at once, not a lease duration later
        finally:
            stop.set()

    def on_signal() -> None:
        if draining:
            log.warning("second signal: stopping now (steps still running are recovered from status)")
            draining[0].cancel()  # which sets the stop flag
            runtime.cut_off()  # else kopf waits for the runners as for any task it did not start
            return
        draining.append(asyncio.create_task(drain_then_stop(), name="graceful stop"))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


def main(options: OperatorOptions) -> None:
    logs.configure(verbose=options.verbose)
    for handler in logging.getLogger().handlers:  # a step's secret values never reach a log line
        handler.addFilter(secret_refs.ScrubLogFilter())
    asyncio.run(run(options))
