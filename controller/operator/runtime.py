"""Runs each Workflow as a saga: one Runner (controller/operator/runner.py) per active workflow drives
the pure state machine and carries out its commands, and is the only writer of the workflow's status.
kopf's watch only tells the runtime about changes of spec (rollback), deletion and approvals; the runtime
hosts the runners and keeps what they share (connection, audit, metrics, indexes, capabilities)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import kopf
from kopf._core.actions import execution as kopf_execution
from kopf._core.reactor import subhandling as kopf_subhandling
from kubernetes_asyncio.client.exceptions import ApiException

from controller import API_GROUP, API_VERSION
from controller.api.capability import CapabilitySpec
from controller.api.metadata import FINALIZER, FINISHED_LABEL, UNFINISHED_SELECTOR
from controller.api.policy import PolicyObject
from controller.api.workflow import TERMINAL_PHASES, UNWATCHED_PHASES, WorkflowPhase, WorkflowSpec
from controller.audit.writer import AuditWriter
from controller.capabilities import custom, snapshots
from controller.capabilities.base import Handler
from controller.capabilities.registry import Registry
from controller.engine import saga
from controller.engine.shards import shard_of
from controller.observability.metrics import Metrics
from controller.operator import limits as policy_state
from controller.operator.kube import Connection
from controller.operator.notify import Notifier
from controller.operator.runner import LastWrite, Runner, now
from controller.operator.shards import Ownership, Standalone

FLUSH_AFTER = 0.5  # seconds a deferred (side-effect-free) transition may wait for the next checkpoint
FETCHED_TTL = 60.0  # seconds a Capability read ahead of the index is trusted without the index
# The condition on a workflow kept from starting because the admission webhooks are not registered
ADMITTED = "Admitted"
WEBHOOKS_MISSING = "WebhooksMissing"
LABELLING_AT_ONCE = 4  # finished workflows labelled at once after an upgrade (_mark_finished)
RECALL_TRIES = 3  # reads of the audit store for who deleted a workflow (recall_deleter), RECALL_PAUSE apart
RECALL_PAUSE = 0.5
PLAN_THREADS = 4  # threads that re-run a plan whose templates need the isolated renderer (which blocks)
# kopf's variables of the handler being run: the cause (the watch event and its body), the handler and its
# sub-handlers (private, as kopf has no public way to start a task outside a handler's context).
KOPF_CAUSE_VARS: tuple[contextvars.ContextVar[Any], ...] = (
    kopf_execution.cause_var,
    kopf_execution.handler_var,
    kopf_execution.subrefs_var,
    kopf_execution.sublifecycle_var,
    kopf_execution.subsettings_var,
    kopf_subhandling.subregistry_var,
    kopf_subhandling.subexecuted_var,
)
log = logging.getLogger("airun.runtime")


@dataclass
class RuntimeSettings:
    workspaces: Path


class Indexes:
    """Live views kept by kopf indexes (populated before any workflow is handled)."""

    def __init__(self) -> None:
        self.policies: Callable[[], list[Any]] = list
        self.approvals: Callable[[str, str], Mapping[str, saga.ApprovalState]] = lambda ns, uid: {}
        self.custom_capabilities: Callable[[], dict[str, CapabilitySpec]] = dict
        # (namespace, requested at) of every undecided Approval, for the metrics
        self.pending_approvals: Callable[[], list[tuple[str, datetime | None]]] = list
        # Set at the first kopf handler call (kopf calls none before its indexes are loaded): until then the
        # views above are empty, and no workflow may be judged by them.
        self.bound = False


def _forget_the_cause() -> None:
    for var in KOPF_CAUSE_VARS:
        var.set(None)


def _runner_context() -> contextvars.Context:
    """The context of a runner's task: the current one (kopf's settings and event queue, which
    kopf.event needs) without the watch event that started it. A task keeps a copy of the context it was
    created in for as long as it runs, and kopf's per-handler variables hold the event's whole body."""
    context = contextvars.copy_context()
    context.run(_forget_the_cause)
    return context


def needs_work(body: Mapping[str, Any]) -> bool:
    status = body.get("status") or {}
    phase = status.get("phase")
    if FINALIZER in (body.get("metadata", {}).get("finalizers") or []):
        return True
    if phase in TERMINAL_PHASES:
        return bool(body.get("spec", {}).get("rollback")) and phase == WorkflowPhase.SUCCEEDED
    return True


class WorkflowRuntime:
    def __init__(
        self,
        connection: Connection,
        registry: Registry,
        settings: RuntimeSettings,
        notifier: Notifier | None = None,
        audit: AuditWriter | None = None,
    ) -> None:
        self.notifier = notifier
        self.audit = audit or AuditWriter(None)
        self.metrics = Metrics()
        self.phases: dict[str, tuple[str, str]] = {}  # uid -> (namespace, phase), for airun_workflows
        # Namespaces where this replica saw workflows: their approval gauges read 0 rather than nothing
        # once their workflows finished and left the watch (a set of names: bounded by the namespaces).
        self.namespaces: set[str] = set()
        self.metrics.watch(
            lambda: list(self.phases.values()), lambda: self.indexes.pending_approvals(), lambda: list(self.namespaces)
        )
        self.kube = connection.gateway()
        self.connection = connection
        self.registry = registry
        self.settings = settings
        self.indexes = Indexes()
        self.runners: dict[str, Runner] = {}
        # The last write of each runner that ended before the watch showed it (see observe)
        self.finished: dict[str, LastWrite] = {}
        self.builtin = registry.specs()
        self.fetched: dict[str, tuple[CapabilitySpec, float]] = {}  # name -> (spec, monotonic time read)
        # name -> the Ready condition last seen or written of each Capability (capability_status.py)
        self.capability_conditions: dict[str, dict[str, Any]] = {}
        self.attestation_key = os.urandom(32)  # main sets the key of --attestation-key-file
        # Whether the admission webhook configurations are registered (controller/operator/webhooks.py):
        # while they are not, no new workflow starts; the ones waiting are kept here, by uid.
        self.webhooks_registered = True
        self.draining = False  # stopping: runners start nothing new, park once their attempts ended
        # Which workflows this replica runs (controller/operator/shards.py): all of them unless --shards.
        self.shards: Ownership = Standalone()
        # The context of the latest kopf handler: runners started outside one (a shard taken over) need
        # kopf's context variables to post Events.
        self.kopf_context: contextvars.Context | None = None
        # With the context of the kopf handler that held each (kopf.event needs kopf's context variables).
        self.held: dict[str, tuple[kopf.Body, contextvars.Context]] = {}
        self.deleted_by: dict[str, str] = {}  # uid -> who deleted it (the DELETE webhook), for the audit
        self.labelling: set[str] = set()  # uids of finished workflows being labelled so (_mark_finished)
        self.labelling_slots = asyncio.Semaphore(LABELLING_AT_ONCE)
        self.background: set[asyncio.Task[None]] = set()
        # Rate-limit counts and breakers of the policies: ConfigMaps of the operator's namespace
        # (controller/operator/limits.py).
        store = policy_state.Store(connection.api, custom.operator_namespace())
        self.limiter = policy_state.Limiter(store)
        self.breakers = policy_state.Breakers(store)
        # Not the default executor: handlers use that one, and a burst of hostile templates must not
        # starve them (nor they it).
        self.plan_threads = ThreadPoolExecutor(PLAN_THREADS, thread_name_prefix="airun-plan")

    @property
    def capabilities(self) -> dict[str, CapabilitySpec]:
        """Built-in capabilities and the Capability objects of the cluster (built-in ones win)."""
        indexed = self.indexes.custom_capabilities()
        # A capability read ahead of the index is dropped once the index has it (the index then tells
        # when it is deleted) or after FETCHED_TTL seconds (deleted before the index ever saw it).
        horizon = time.monotonic() - FETCHED_TTL
        for name in [n for n, (_, read) in self.fetched.items() if n in indexed or read < horizon]:
            del self.fetched[name]
        return {**{n: spec for n, (spec, _) in self.fetched.items()}, **indexed, **self.builtin}

    async def fetch_missing_capabilities(self, spec: WorkflowSpec) -> dict[str, CapabilitySpec]:
        """Capability objects the index has not seen yet (created just before the workflow), read from
        the API server; the index takes over once it catches up."""
        wanted = {s.capability for s in spec.steps if s.capability}
        wanted |= {s.compensation.capability for s in spec.steps if s.compensation}
        await self._fetch(wanted)
        # and the compensations those name (applied together, the index may have neither yet)
        known = self.capabilities
        await self._fetch({u for n in wanted if n in known for u in custom.unknown_references(known[n], known)})
        return self.capabilities

    async def _fetch(self, names: set[str]) -> None:
        known = self.capabilities
        for name in sorted(names - set(known)):
            try:
                body = await self.connection.custom.get_cluster_custom_object(
                    API_GROUP, API_VERSION, "capabilities", name
                )
                self.fetched[name] = (custom.parse(name, body.get("spec") or {}), time.monotonic())
            except (ApiException, custom.InvalidCapability):
                continue

    @property
    def workspaces(self) -> Path:
        return self.settings.workspaces

    def policies(self) -> list[PolicyObject]:
        return list(self.indexes.policies())

    def approvals(self, namespace: str, workflow_uid: str) -> Mapping[str, saga.ApprovalState]:
        return self.indexes.approvals(namespace, workflow_uid)

    def deleter_of(self, workflow_uid: str) -> str | None:
        return self.deleted_by.get(workflow_uid)

    async def recall_deleter(self, workflow_uid: str) -> None:
        """Who deleted the workflow, from the audit store, when this replica's DELETE webhook did not see
        it: the operator restarted since, or another replica served the webhook. That replica's audit
        writer may still be committing the record, so it is asked again for a moment."""
        store = self.audit.store
        for attempt in range(RECALL_TRIES):
            if workflow_uid in self.deleted_by or store is None:
                return
            try:
                actor = await asyncio.to_thread(store.deletion_actor, workflow_uid)
            except Exception:  # the store is down: the compensation is recorded without its actor
                log.warning("could not read who deleted workflow %s from the audit store", workflow_uid)
                return
            if actor:
                self.deleted_by[workflow_uid] = actor
                return
            if attempt + 1 < RECALL_TRIES:
                await asyncio.sleep(RECALL_PAUSE)

    def runner_ended(self, workflow_uid: str, last: LastWrite | None) -> None:
        self.runners.pop(workflow_uid, None)
        # Only until the watch shows the last write: a finished workflow is not held in memory.
        if last is None:
            self.finished.pop(workflow_uid, None)
        else:
            self.finished[workflow_uid] = last

    def handler(self, capability: str) -> Handler:
        if capability in self.builtin:
            return self.registry.handler(capability)
        return custom.http_handler(self.capabilities[capability])

    def stopping(self, workflow_uid: str) -> bool:
        """Whether the runner of WORKFLOW_UID must start nothing new and park: the operator is stopping,
        or this replica is giving the workflow's shard back."""
        return self.draining or self.shards.releasing(workflow_uid)

    async def observe(self, body: kopf.Body) -> None:
        uid = body.metadata.uid or ""
        if not self.shards.owns(uid) and uid not in self.runners:
            return  # another replica's (a shard this one takes over is listed again: adopt_shard)
        self.namespaces.add(body.metadata.namespace or "")
        self.phases[uid] = (
            body.metadata.namespace or "",
            (body.get("status") or {}).get("phase") or WorkflowPhase.PENDING,
        )
        runner = self.runners.get(uid)
        if runner is not None:
            runner.update(body)
            return
        last = self.finished.get(uid)
        if last is not None:
            # Watch events of a runner's own writes can arrive after it finished. Such a stale body
            # would look like an interrupted workflow and run steps again: wait until the watch has
            # caught up with the last write (nobody else writes status).
            finalizer = FINALIZER in (body.metadata.get("finalizers") or [])
            if dict(body.get("status") or {}) != last.status or finalizer != last.finalizer:
                log.debug("%s/%s: stale watch event ignored", body.metadata.namespace, body.metadata.name)
                return
            del self.finished[uid]
        if not needs_work(body):
            self._mark_finished(body)
            return
        if self.draining:  # while stopping, the next operator starts new ones
            return
        if await self._hold(body):
            return
        runner = Runner(self, body)
        self.runners[uid] = runner
        runner.task = asyncio.create_task(
            runner.run(), name=f"workflow {body.metadata.namespace}/{body.metadata.name}", context=_runner_context()
        )

    def _mark_finished(self, body: kopf.Body) -> None:
        """A workflow that finished before the operator labelled its finished ones (an upgrade), or whose
        label someone removed: labelled now, so that it leaves the watch (FINISHED_LABEL)."""
        meta = body.metadata
        uid = meta.uid or ""
        if (
            (body.get("status") or {}).get("phase") not in UNWATCHED_PHASES
            or FINISHED_LABEL in (meta.get("labels") or {})
            or FINALIZER in (meta.get("finalizers") or [])
            or meta.get("deletionTimestamp")
            or uid in self.labelling
            or self.draining
        ):
            return
        self.labelling.add(uid)
        task = asyncio.create_task(self._label_finished(meta.namespace or "", meta.name or "", uid, meta))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _label_finished(self, namespace: str, name: str, uid: str, meta: Mapping[str, Any]) -> None:
        patch = {"metadata": {"labels": {FINISHED_LABEL: "true"}, "resourceVersion": meta.get("resourceVersion")}}
        try:
            async with self.labelling_slots:  # an upgrade labels every finished workflow: a few at a time
                await self.connection.patch_workflow(namespace, name, patch)
        except ApiException as error:  # 409: it changed meanwhile (its next event decides again); 404: gone
            if error.status not in (404, 409):
                log.warning("%s/%s: could not label it finished: %s", namespace, name, error.reason)
        finally:
            self.labelling.discard(uid)

    async def _hold(self, body: kopf.Body) -> bool:
        """Keeps a workflow that has not started from starting while the webhooks are not registered,
        and says so on it (condition Admitted False, reason WebhooksMissing)."""
        uid = body.metadata.uid or ""
        phase = (body.get("status") or {}).get("phase")
        if (
            self.webhooks_registered
            or phase not in (None, WorkflowPhase.PENDING)
            or body.metadata.get("deletionTimestamp")
        ):
            self.held.pop(uid, None)
            return False
        self.held[uid] = (body, contextvars.copy_context())
        conditions = (body.get("status") or {}).get("conditions") or []
        if not any(c.get("type") == ADMITTED and c.get("reason") == WEBHOOKS_MISSING for c in conditions):
            condition = {
                "type": ADMITTED,
                "status": "False",
                "reason": WEBHOOKS_MISSING,
                "message": "the admission webhook configurations of airun are not registered: the workflow "
                "waits until they are (identities cannot be attested without them)",
                "lastTransitionTime": saga.iso(now()),
                "observedGeneration": int(body.metadata.get("generation") or 1),
            }
            with contextlib.suppress(ApiException):
                await self.connection.patch_workflow_status(
                    body.metadata.namespace or "",
                    body.metadata.name or "",
                    {"status": {"phase": WorkflowPhase.PENDING.value, "conditions": [condition]}},
                )
        return True

    async def set_webhooks_registered(self, registered: bool) -> None:
        self.metrics.webhooks_registered.set(1 if registered else 0)
        if registered == self.webhooks_registered:
            return
        self.webhooks_registered = registered
        if registered:
            log.info("the admission webhooks are registered: %d waiting workflows start", len(self.held))
            for body, context in list(self.held.values()):
                await context.run(asyncio.ensure_future, self.observe(body))
        else:
            log.warning("the admission webhooks are not registered: no new workflow starts until they are")

    async def gone(self, body: kopf.Body) -> None:
        """The watch no longer shows the workflow (a DELETED event): deleted, or labelled finished, so that
        it left the watch's selector. The API server then sends the body from before the change, so which
        of the two it was is told by our own last write, else by reading the workflow back."""
        uid = body.metadata.uid or ""
        last = self.finished.get(uid)
        runner = self.runners.get(uid)
        left = (last is not None and last.finished_label) or (runner is not None and runner.wrote_finished_label)
        if not left and not body.metadata.get("deletionTimestamp"):
            # Another replica's workflow: its owner tells a deletion apart (and collects the snapshots), so
            # the other replicas spend no GET on each workflow that finishes.
            left = not self.shards.owns(uid) or await self._still_there(body)
        if left and runner is not None:  # its last write's echo: it ends by itself, and keeps nothing then
            runner.left_watch = True
            self.phases.pop(uid, None)
            return
        self.forget(body, deleted=not left)

    async def _still_there(self, body: kopf.Body) -> bool:
        try:
            fresh = await self.connection.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, body.metadata.namespace or "", "workflows", body.metadata.name or ""
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return bool((fresh.get("metadata") or {}).get("uid") == body.metadata.uid)

    def forget(self, body: kopf.Body, deleted: bool = True) -> None:
        """Drops what this replica holds of the workflow; its snapshots too when it was DELETED (a finished
        one that only left the watch may still be rolled back: controller/operator/finished.py collects
        them when it is deleted)."""
        self.held.pop(body.metadata.uid or "", None)
        self.deleted_by.pop(body.metadata.uid or "", None)
        if deleted:
            # The workflow is gone: nothing will restore from its snapshots any more.
            snapshots.collect(self.settings.workspaces / (body.metadata.namespace or ""), body.metadata.uid or "")
        self.phases.pop(body.metadata.uid or "", None)
        self.finished.pop(body.metadata.uid or "", None)
        runner = self.runners.pop(body.metadata.uid or "", None)
        if runner is not None and runner.task is not None:
            runner.task.cancel()

    # -- shards (controller/operator/shards.py calls these) -------------------------------------------

    def _of_shard(self, shard: int) -> list[str]:
        count = self.shards.count
        return [uid for uid in [*self.runners, *self.finished, *self.phases] if shard_of(uid, count) == shard]

    async def adopt_shard(self, shard: int) -> None:
        """This replica took SHARD: its workflows are read again (the watch does not repeat them) and
        those with work left start here, resuming from their status as after a restart."""
        if not self.indexes.bound:
            return  # kopf has not listed the workflows yet: it will, and observe() now takes this shard's
        listed = await self.connection.custom.list_cluster_custom_object(
            API_GROUP, API_VERSION, "workflows", label_selector=UNFINISHED_SELECTOR
        )
        count = self.shards.count
        mine = [item for item in listed.get("items") or [] if shard_of(item["metadata"]["uid"], count) == shard]
        log.info("shard %d: %d workflows", shard, len(mine))
        for item in mine:
            body = kopf.Body(item)
            if self.kopf_context is not None:
                await self.kopf_context.run(asyncio.ensure_future, self.observe(body))
            else:
                await self.observe(body)

    async def drop_shard(self, shard: int) -> None:
        """This replica lost SHARD (or gives it back): what still runs of it stops now, and nothing it
        remembers of those workflows is trusted any more (another replica moves them on)."""
        uids = self._of_shard(shard)
        tasks = [r.task for uid in uids if (r := self.runners.get(uid)) is not None and r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for uid in uids:
            self.runners.pop(uid, None)
            self.finished.pop(uid, None)
            self.phases.pop(uid, None)

    async def park_shard(self, shard: int, grace: float) -> None:
        """Before SHARD is given back: its runners start nothing new, finish their attempts, checkpoint
        and park (GRACE seconds at most; the rest is cut off by drop_shard)."""
        runners = [r for uid in self._of_shard(shard) if (r := self.runners.get(uid)) is not None]
        for runner in runners:
            runner.wakeup.set()
        tasks = [r.task for r in runners if r.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    def fenced(self, workflow_uid: str, fresh: Mapping[str, Any]) -> None:
        """Another writer moved the workflow's status on (a replica that held its shard before): the
        runner stopped without writing. If this replica still owns the workflow it starts over from the
        status as it is now."""
        if self.shards.owns(workflow_uid):
            raw: Any = dict(fresh)
            body = kopf.Body(raw)
            context = self.kopf_context or contextvars.copy_context()
            context.run(asyncio.ensure_future, self.observe(body))

    def wake(self, namespace: str, workflow: str) -> None:
        for runner in self.runners.values():
            if runner.ref.namespace == namespace and runner.ref.name == workflow:
                runner.wakeup.set()

    async def drain(self, grace: float) -> int:
        """Graceful stop: no runner starts a step or a compensation any more; each lets the attempts it
        has in flight end, checkpoints their results and parks. Waits GRACE seconds at most and returns
        how many runners were still busy (their attempts are cut off by shutdown and recovered from status
        by the next operator, as after a crash)."""
        self.draining = True
        for runner in self.runners.values():
            runner.wakeup.set()
        tasks = [r.task for r in self.runners.values() if r.task is not None]
        log.info("stopping: %d workflows finish their running steps (at most %.0f s)", len(tasks), grace)
        started = time.monotonic()
        busy: set[asyncio.Task[None]] = set()
        if tasks:
            _, busy = await asyncio.wait(tasks, timeout=grace)
        log.info("stopped in %.1f s; %d workflows were still running a step", time.monotonic() - started, len(busy))
        return len(busy)

    def cut_off(self) -> None:
        """Stops every runner now, attempts in flight included (a second signal)."""
        for runner in self.runners.values():
            if runner.task is not None:
                runner.task.cancel()

    async def shutdown(self) -> None:
        await self.kube.close()
        tasks = [r.task for r in self.runners.values() if r.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.plan_threads.shutdown(wait=False, cancel_futures=True)


def workspaces_from_env() -> Path:
    return Path(os.environ.get("AIRUN_WORKSPACES", "/var/lib/airun/workspaces"))
