"""One workflow's saga in this process: a Runner is the asyncio task that drives the pure state machine
(controller.engine.saga) for one workflow and carries out its commands, and the only writer of that
workflow's status. It uses its host (the WorkflowRuntime, controller/operator/runtime.py) only through
RunnerHost: the cluster connection, the audit writer, the metrics, and live views of capabilities,
policies and approvals."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from controller import API_GROUP, API_VERSION
from controller.api.approval import ApprovalNotice
from controller.api.audit import AuditKind
from controller.api.capability import CapabilitySpec
from controller.api.metadata import FINALIZER, FINISHED_LABEL, ROLLBACK_BY_ANNOTATION
from controller.api.policy import PolicyObject, Principal
from controller.api.workflow import (
    TERMINAL_PHASES,
    UNWATCHED_PHASES,
    Decision,
    EventType,
    Reason,
    WorkflowPhase,
    WorkflowSpec,
    WorkflowStatus,
)
from controller.audit.writer import AuditWriter
from controller.capabilities import secrets
from controller.capabilities.base import CapabilityError, Handler, Invocation
from controller.capabilities.handlers.k8s import KubeGateway
from controller.engine import checkpoints, faults, saga, steps, templating
from controller.engine.state import compensation_of
from controller.observability.metrics import Metrics
from controller.operator import approvals as approval_objects
from controller.operator import attestation
from controller.operator import limits as policy_state
from controller.operator.kube import Connection
from controller.operator.notify import Notifier
from controller.policy import limits as policy_limits

FLUSH_AFTER = 0.5  # seconds a deferred (side-effect-free) transition may wait for the next checkpoint
log = logging.getLogger("airun.runtime")


class CoreFault(Exception):
    """The pure core raised something unexpected while planning a workflow (a bug, not a decision)."""


class Fenced(Exception):
    """Someone else wrote the workflow's status since this runner last did (another replica holds, or
    held, its shard): this runner must not write again. FRESH is the workflow as it is now."""

    def __init__(self, fresh: Mapping[str, Any]) -> None:
        super().__init__("the workflow's status was written by another replica")
        self.fresh = fresh


def now() -> datetime:
    return datetime.now(UTC)


class RunnerHost(Protocol):
    """What a Runner uses of the runtime that hosts it, and nothing more."""

    connection: Connection  # status and finalizer PATCHes, Approvals
    kube: KubeGateway  # what capability handlers call the API with (as the workflow's principal)
    audit: AuditWriter
    metrics: Metrics
    notifier: Notifier | None
    plan_threads: ThreadPoolExecutor  # where a plan that needs the isolated template renderer runs
    attestation_key: bytes
    limiter: policy_state.Limiter  # rate-limit counts of the policies, kept in the API
    breakers: policy_state.Breakers  # denials and circuit breakers of the policies, kept in the API

    def stopping(self, workflow_uid: str) -> bool:
        """Start nothing new for the workflow and park (the operator stops, or gives its shard back)."""
        ...

    def fenced(self, workflow_uid: str, fresh: Mapping[str, Any]) -> None:
        """The runner stopped because another writer moved the status on (Fenced)."""
        ...

    @property
    def capabilities(self) -> dict[str, CapabilitySpec]: ...

    @property
    def workspaces(self) -> Path: ...

    async def fetch_missing_capabilities(self, spec: WorkflowSpec) -> dict[str, CapabilitySpec]: ...

    def handler(self, capability: str) -> Handler: ...

    def policies(self) -> list[PolicyObject]: ...

    def approvals(self, namespace: str, workflow_uid: str) -> Mapping[str, saga.ApprovalState]: ...

    def deleter_of(self, workflow_uid: str) -> str | None:
        """Who deleted the workflow (the DELETE webhook recorded it), if it is being deleted."""
        ...

    async def recall_deleter(self, workflow_uid: str) -> None:
        """Reads who deleted the workflow from the audit store when deleter_of does not know."""
        ...

    def runner_ended(self, workflow_uid: str, last: LastWrite | None) -> None:
        """The runner's task is over: forget it, and know its last write (later watch events are stale),
        or None when the watch has already shown that write (no stale event can follow) or when it was
        fenced (its writes are not the last ones)."""
        ...


def _annotation(body: Mapping[str, Any], key: str) -> str | None:
    value = ((body.get("metadata") or {}).get("annotations") or {}).get(key)
    return str(value) if value else None


def principal_of(body: Mapping[str, Any], key: bytes) -> Principal:
    """The creator as the admission webhook attested it (controller/operator/attestation.py); an empty
    user when nothing verifies, so that the workflow never runs (reason Unattested). Once the operator
    has written status.principal (only it may write status) that is the user; its groups count only
    while the attestation still verifies for that same user."""
    status = body.get("status") or {}
    attested = attestation.verified(key, body)
    recorded = status.get("principal")
    if recorded:
        groups = attested.groups if attested is not None and attested.user == recorded else []
        return Principal(user=recorded, groups=groups)
    return attested or Principal(user="", groups=[])


@dataclass
class LastWrite:
    """What a finished runner wrote last: watch events older than that are stale."""

    status: dict[str, Any]
    finalizer: bool
    # It labelled the workflow finished: the watch shows that write only as the workflow leaving it (a
    # DELETED event carrying the body before the write), which must not be taken for a deletion.
    finished_label: bool = False


def _reference(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object's kind and identity, and its labels (as the workflow started), for events and policies."""
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "labels": dict(meta.get("labels") or {}),
        },
    }


class Runner:
    """One workflow's saga in this process."""

    def __init__(self, host: RunnerHost, body: kopf.Body) -> None:
        self.host = host
        self.task: asyncio.Task[None] | None = None
        # What the events name and the policies read of the object: not the whole first body (its
        # managedFields, spec and status as parsed JSON would stay in memory as long as the runner).
        self.reference: Mapping[str, Any] = _reference(body)
        meta = body.metadata
        self.ref = saga.WorkflowRef(
            meta.name or "",
            meta.namespace or "",
            meta.uid or "",
            int(meta.get("generation") or 1),
            bool(meta.get("deletionTimestamp")),
        )
        self.spec_error: str | None = None
        self.spec = self._parse_spec(body)
        self.status = WorkflowStatus.model_validate(body.get("status") or {})
        self.written: dict[str, Any] = self.status.dump()  # what the API server holds
        self.unwritten_since: float | None = None  # when status first moved ahead of `written`
        self.principal = principal_of(body, host.attestation_key)
        self.rollback_by = _annotation(body, ROLLBACK_BY_ANNOTATION)
        self.finalizers = list(meta.get("finalizers") or [])  # as the watch last showed them
        self.finalizer_set = FINALIZER in self.finalizers  # ours: changed only by our own writes
        self.labelled_finished = FINISHED_LABEL in (meta.get("labels") or {})
        self.wrote_finished_label = False  # its last write labelled the workflow finished (LastWrite)
        self.left_watch = False  # ... and the watch has shown it leaving
        # The fencing token: the resourceVersion of the workflow as this runner last wrote (or first read)
        # it. Every write carries it as a precondition; it moves only with this runner's own writes, never
        # with the watch, so a write after anyone else's status write fails (409) instead of undoing it.
        self.version: str | None = meta.get("resourceVersion")
        self.fenced_by: Mapping[str, Any] | None = None
        self.status_shown = dict(body.get("status") or {}) == self.written  # the watch showed self.written
        self.actions: dict[str, asyncio.Task[None]] = {}
        self.compensations: dict[str, asyncio.Task[None]] = {}
        self.outcomes: list[saga.ActionResult | saga.CompensationResult] = []
        self.wakeup = asyncio.Event()
        self.requested: set[str] = set()
        self.deleter_recalled = False  # asked the audit store who deleted it (_drive), when being deleted
        self.workspace = host.workspaces / self.ref.namespace

    def _parse_spec(self, body: Mapping[str, Any]) -> WorkflowSpec:
        try:
            return WorkflowSpec.model_validate(body.get("spec") or {})
        except ValueError as error:
            self.spec_error = str(error)
            return WorkflowSpec(steps=[])

    def update(self, body: kopf.Body) -> None:
        """A newer body from the watch. Most are echoes of our own writes: wake up only for news."""
        meta = body.metadata
        ref = saga.WorkflowRef(
            self.ref.name,
            self.ref.namespace,
            self.ref.uid,
            int(meta.get("generation") or 1),
            bool(meta.get("deletionTimestamp")),
        )
        self.finalizers = list(meta.get("finalizers") or [])
        self.labelled_finished = FINISHED_LABEL in (meta.get("labels") or {})
        # Compared here rather than kept: the body's status is not held once the runner has seen it.
        self.status_shown = dict(body.get("status") or {}) == self.written
        self.rollback_by = _annotation(body, ROLLBACK_BY_ANNOTATION)
        if ref != self.ref:  # a spec change (rollback) bumps the generation; deletion sets a timestamp
            self.ref = ref
            self.spec = self._parse_spec(body)
            self.wakeup.set()

    def world(self) -> saga.World:
        return saga.World(
            ref=self.ref,
            spec=self.spec,
            status=self.status,
            capabilities=self.host.capabilities,
            policies=self.host.policies(),
            principal=self.principal,
            now=now(),
            approvals=self.host.approvals(self.ref.namespace, self.ref.uid),
            in_flight=frozenset(self.actions),
            compensating=frozenset(self.compensations),
            labels=dict(self.reference["metadata"]["labels"]),
        )

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        delay = 1.0
        try:
            while True:
                try:
                    await self._run()
                    return
                except ApiException as error:
                    if error.status == 404:  # the workflow is gone
                        return
                    self.host.metrics.reconcile_errors.inc()
                    log.warning(
                        "API error %s (%s); trying again in %.0f s",
                        error.status,
                        error.reason,
                        delay,
                        extra=self._log_context(),
                    )
                except (OSError, TimeoutError, aiohttp.ClientError) as error:
                    self.host.metrics.reconcile_errors.inc()
                    log.warning(
                        "%s: %s; trying again in %.0f s", type(error).__name__, error, delay, extra=self._log_context()
                    )
                # Transient trouble (the API server restarting, a timeout): the loop starts over from what
                # is known; in-flight attempts go on and their outcomes are folded in when they come.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        except asyncio.CancelledError:
            for task in [*self.actions.values(), *self.compensations.values()]:
                task.cancel()
            raise
        except Fenced as fenced:
            log.warning("%s: this runner stops", fenced, extra=self._log_context())
            self.fenced_by = fenced.fresh
        except CoreFault as fault:
            self.host.metrics.reconcile_errors.inc()
            log.error("planning failed: %s", fault.__cause__, exc_info=fault.__cause__, extra=self._log_context())
            await self._fail_by_fault(fault.__cause__ or fault)
        except Exception:
            self.host.metrics.reconcile_errors.inc()
            log.exception("the runner failed; it resumes from status on the next event", extra=self._log_context())
        finally:
            if self.fenced_by is not None:
                self.host.runner_ended(self.ref.uid, None)
                self.host.fenced(self.ref.uid, self.fenced_by)
            else:
                self.host.runner_ended(self.ref.uid, self.last_write())

    def last_write(self) -> LastWrite | None:
        """What the runtime must remember of this runner once it ended: its last write, until the watch
        shows it; None when the watch already did (events come in order, so none older can follow)."""
        if self.left_watch:
            return None  # the watch showed its last write (as the workflow leaving it)
        if self.wrote_finished_label:
            return LastWrite(self.written, self.finalizer_set, finished_label=True)
        if self.status_shown and (FINALIZER in self.finalizers) == self.finalizer_set:
            return None
        return LastWrite(self.written, self.finalizer_set)

    async def _run(self) -> None:
        while True:
            if not self.ref.deleting:
                await self._ensure_finalizer()
            if self.status.phase in (None, WorkflowPhase.PENDING):
                await self.host.fetch_missing_capabilities(self.spec)
            if not await self._drive():
                return  # parked: the operator is stopping, and the next one resumes from status
            await self._remove_finalizer()
            # A rollback requested while this runner was finishing reached update(), not a new runner.
            if not (self.spec.rollback and self.status.phase is WorkflowPhase.SUCCEEDED and not self.ref.deleting):
                return

    async def _drive(self) -> bool:
        """Plans and carries out until the workflow is finished and nothing runs (True), or until the
        operator stops (False: parked)."""
        while True:
            await self._fold_outcomes()
            if self.host.stopping(self.ref.uid):
                if await self._park():
                    return False
                continue
            if self.ref.deleting and not self.deleter_recalled:
                self.deleter_recalled = True  # once: a deletion whose webhook failed open has no record
                if self.host.deleter_of(self.ref.uid) is None:
                    await self.host.recall_deleter(self.ref.uid)
            before = self.status
            plan = await self._pure(saga.plan, self.world())
            await self._rate_limit(plan)
            self._record_plan(before, plan)
            await self._denials(before, plan)
            if self._must_checkpoint(plan):
                await self._write(plan.status)
            else:
                self.status = plan.status  # written with the next checkpoint, or within FLUSH_AFTER
                self.unwritten_since = self.unwritten_since or time.monotonic()
            self._publish(plan.events)
            self._start(plan)
            await self._ask_for_approvals(plan)
            if plan.finished and not self.actions and not self.compensations:
                return True
            await self._wait(plan)

    async def _fold_outcomes(self) -> None:
        """The results that arrived since the last plan, folded into the status (pure)."""
        for outcome in self.outcomes:
            if isinstance(outcome, saga.ActionResult):
                self.status = await self._pure(saga.record_action, self.world(), outcome)
            else:
                self.status = await self._pure(saga.record_compensation, self.world(), outcome)
        self.outcomes.clear()
        self.wakeup.clear()

    def _publish(self, events: list[saga.Event]) -> None:
        for event in events:
            level = logging.WARNING if event.type is EventType.WARNING else logging.INFO
            log.log(level, "%s: %s", event.reason, event.message, extra=self._log_context())
            kopf.event(
                self.reference,  # type: ignore[arg-type]  # any mapping with metadata will do
                type=event.type,
                reason=event.reason,
                message=event.message,
            )

    def _start(self, plan: saga.Plan) -> None:
        """Cancels the attempts the plan cuts off and starts its attempts and compensations (their status
        is durable by now, or needs no checkpoint)."""
        for step in plan.cancel:
            if step in self.actions:
                self.actions[step].cancel()
        for action in plan.actions:
            self.actions[action.step] = asyncio.create_task(self._act(action))
        for compensation in plan.compensations:
            self.compensations[compensation.step] = asyncio.create_task(self._compensate(compensation))

    async def _ask_for_approvals(self, plan: saga.Plan) -> None:
        """Creates the Approvals the plan asks for (once each) and expires those it says are over."""
        for request in plan.approvals:
            if request.name in self.requested:
                continue
            try:
                created = await approval_objects.create(self.host.connection, self.ref, request, self.principal.user)
            except approval_objects.ApprovalNameTaken as error:
                self.status = saga.record_approval_refused(self.world(), request.step, str(error))
                self.wakeup.set()
                continue
            if created is not None:
                approval_objects.announce(self.host.notifier, ApprovalNotice.REQUESTED, created)
            self.requested.add(request.name)
        for expired in plan.expire:
            expired_body = await approval_objects.expire(self.host.connection, self.ref.namespace, expired.name)
            approval_objects.announce(self.host.notifier, ApprovalNotice.EXPIRED, expired_body)

    async def _wait(self, plan: saga.Plan) -> None:
        """Until an outcome arrives, the watch brings news, the plan's wake-up time comes, or a deferred
        transition is due to be written (people watching kubectl see progress soon enough)."""
        timeout = None
        if plan.wake_at is not None:
            timeout = max(0.0, (plan.wake_at - now()).total_seconds())
        if self.unwritten_since is not None:
            flush = max(0.0, FLUSH_AFTER - (time.monotonic() - self.unwritten_since))
            timeout = flush if timeout is None else min(timeout, flush)
        if not self.outcomes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout)

    async def _park(self) -> bool:
        """While the operator stops: nothing is planned (so nothing new starts); the attempts in flight
        end and their outcomes are recorded by _drive. Once none is left the status is written (the
        results, and any deferred transition) and the runner is parked (True)."""
        if self.actions or self.compensations:
            await self.wakeup.wait()  # an attempt ended (_done)
            return False
        await self._write(self.status)
        return True

    async def _pure(self, function: Callable[..., Any], *args: Any) -> Any:
        """Runs a pure function of the saga on the event loop, where a template that only reads values
        renders in microseconds; if one needs the isolated renderer (which blocks for up to its time
        limit) the same function runs again in a worker thread: it is pure, so nothing is done twice.
        Anything unexpected it raises is a CoreFault, which fails this workflow, never the operator."""
        try:
            try:
                with templating.non_blocking():
                    return function(*args)
            except templating.NeedsIsolation:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.host.plan_threads, functools.partial(function, *args))
        except Exception as error:
            raise CoreFault(str(error)) from error

    async def _fail_by_fault(self, error: BaseException) -> None:
        """The last resort: the workflow ends Failed (InternalError) with a message, rather than with no
        phase and a runner that dies again at every event."""
        for task in [*self.actions.values(), *self.compensations.values()]:
            task.cancel()
        status = faults.failed_by_fault(self.world(), error)
        try:
            await self._write(status)
            self._audit(
                AuditKind.WORKFLOW_FINISHED,
                phase=WorkflowPhase.FAILED.value,
                reason=status.reason,
                message=status.message,
            )
            kopf.event(
                self.reference,  # type: ignore[arg-type]
                type=EventType.WARNING,
                reason=status.reason or Reason.INTERNAL_ERROR,
                message=status.message or "",
            )
            await self._remove_finalizer()
        except Exception:
            log.exception("could not record the failure; it is retried on the next event", extra=self._log_context())

    async def _rate_limit(self, plan: saga.Plan) -> None:
        """Counts each step about to start against the `limits:` of the policies (kept in the API: exact
        under concurrency, across restarts); a step beyond a limit does not start: it is DENY, RateLimited."""
        if not plan.actions:
            return
        policies = self.host.policies()
        kept = []
        for action in plan.actions:
            applied = policy_limits.limits_for(policies, self.principal, self.ref.namespace, action.capability)
            refused = await self.host.limiter.reserve(applied, action.idempotency_key) if applied else None
            if refused is None:
                kept.append(action)
                continue
            limit, retry_after = refused
            message = f"rate limited by {limit.describe()}; the window frees in {retry_after:.0f} s"
            world = dataclasses.replace(self.world(), status=plan.status)
            plan.status = saga.record_rate_limited(world, action.step, message)
            plan.events.append(
                saga.Event(EventType.WARNING, Reason.RATE_LIMITED.value, f"step {action.step}: {message}")
            )
            self.wakeup.set()
        plan.actions = kept

    async def _denials(self, before: WorkflowStatus, plan: saga.Plan) -> None:
        """Each newly denied step counts against the principal's circuit breakers (`breaker:`)."""
        denied_before = {s.name for s in before.steps if s.decision is Decision.DENY}
        denied = [s for s in plan.status.steps if s.decision is Decision.DENY and s.name not in denied_before]
        policies = self.host.policies()
        if not denied or not policy_limits.breakers_for(policies, self.ref.namespace):
            return
        for s in denied:
            opened = await self.host.breakers.deny(self.principal.user, self.ref.namespace, policies)
            for policy in opened:
                self.host.metrics.breaker_opens.labels(policy).inc()
                message = (
                    f"the circuit breaker of {policy} opened for {self.principal.user}: its new workflows are "
                    f"refused until an approver runs `airun policy reset {self.principal.user}`"
                )
                plan.events.append(saga.Event(EventType.WARNING, "BreakerOpened", message))
                self._audit(AuditKind.BREAKER_OPENED, s.name, policy=policy, principalGroups=self.principal.groups)

    def _audit(self, kind: AuditKind, step: str | None = None, actor: str | None = None, **payload: Any) -> None:
        self.host.audit.record(
            kind,
            namespace=self.ref.namespace,
            workflow=self.ref.name,
            workflow_uid=self.ref.uid,
            step=step,
            principal=self.principal.user,
            actor=actor,
            payload=payload,
        )

    def _record_plan(self, before: WorkflowStatus, plan: saga.Plan) -> None:
        """What this plan decided and is about to do, for the people reading the audit trail and for the
        metrics; written before the status that makes it happen (write-ahead, see _write)."""
        after = plan.status
        if before.phase in (None, WorkflowPhase.PENDING) and after.phase is not WorkflowPhase.PENDING:
            self._audit(
                AuditKind.WORKFLOW_STARTED,
                groups=self.principal.groups,
                description=self.spec.description,
                steps=[s.name for s in self.spec.steps],
                generation=self.ref.generation,
            )
        self._audit_decisions(before, after)
        self._audit_starts(plan)
        if before.phase is WorkflowPhase.SUCCEEDED and after.phase is WorkflowPhase.COMPENSATING:
            self._audit(AuditKind.WORKFLOW_ROLLBACK_REQUESTED, actor=self._undo_actor())
        self._audit_compensations(plan)
        if after.phase in TERMINAL_PHASES and before.phase not in TERMINAL_PHASES:
            self._audit(
                AuditKind.WORKFLOW_FINISHED,
                phase=after.phase.value if after.phase else None,
                reason=after.reason,
                message=after.message,
            )
            started, finished = saga.parse_time(after.started_at), saga.parse_time(after.finished_at)
            if started and finished and after.phase:
                duration = (finished - started).total_seconds()
                self.host.metrics.workflow_duration.labels(after.phase.value).observe(duration)

    def _audit_decisions(self, before: WorkflowStatus, after: WorkflowStatus) -> None:
        """The policy decisions made in this plan, each once: the steps', then their compensations'."""
        decided = {s.name for s in before.steps if s.decision is not None}
        for s in after.steps:
            if s.decision is not None and s.name not in decided:
                self.host.metrics.decisions.labels(s.decision.value).inc()
                condition = s.condition.model_dump(by_alias=True, exclude_none=True) if s.condition else None
                self._audit(
                    AuditKind.STEP_DECISION,
                    s.name,
                    decision=s.decision.value,
                    policy=s.policy,
                    audit=s.audit,
                    condition=condition,
                )
        undo_decided = {s.name for s in before.steps if s.compensation and s.compensation.decision is not None}
        for s in after.steps:
            undo = s.compensation
            if undo is not None and undo.decision is not None and s.name not in undo_decided:
                self._audit(
                    AuditKind.COMPENSATION_DECISION,
                    s.name,
                    actor=self._undo_actor(),
                    capability=undo.capability,
                    decision=undo.decision.value,
                    policy=undo.policy,
                    approved=undo.approved,
                )

    def _audit_starts(self, plan: saga.Plan) -> None:
        """The approvals asked for and the attempts about to start."""
        for request in plan.approvals:
            if request.name not in self.requested:
                self._audit(
                    AuditKind.APPROVAL_REQUESTED,
                    request.step,
                    approval=request.name,
                    capability=request.capability,
                    risk=request.risk.value if request.risk else None,
                    inputs=request.inputs,
                    inputsHash=request.inputs_hash,
                    approvers=request.approvers.model_dump() if request.approvers else None,
                )
        for action in plan.actions:
            self._audit(
                AuditKind.STEP_STARTED,
                action.step,
                capability=action.capability,
                attempt=action.attempt,
                inputs=saga.redact(action.inputs),
                idempotencyKey=action.idempotency_key,
                recovered=action.recovered,
            )

    def _audit_compensations(self, plan: saga.Plan) -> None:
        for comp in plan.compensations:
            self._audit(
                AuditKind.COMPENSATION_STARTED,
                comp.step,
                actor=self._undo_actor(),
                capability=comp.capability,
                attempt=comp.attempt,
                inputs=saga.redact(comp.inputs),
            )

    def _undo_actor(self) -> str | None:
        """Who asked for this undoing, when a person did: the deleter (DELETE webhook) or whoever set
        spec.rollback (annotated by the UPDATE webhook); None for the compensation of a failure."""
        if self.ref.deleting:
            return self.host.deleter_of(self.ref.uid)
        if self.spec.rollback:
            return self.rollback_by
        return None

    def _log_context(self, step: str | None = None) -> dict[str, str]:
        context = {"workflow": f"{self.ref.namespace}/{self.ref.name}"}
        if step:
            context["step"] = step
        return context

    def _must_checkpoint(self, plan: saga.Plan) -> bool:
        """Whether the status must be durable before the plan is carried out (engine.checkpoints)."""
        overdue = self.unwritten_since is not None and time.monotonic() - self.unwritten_since >= FLUSH_AFTER
        deferrable = steps.deferrable_steps(self.spec.steps, self.host.capabilities)
        return checkpoints.must_checkpoint(plan, self.written, deferrable, overdue=overdue)

    async def _write(self, status: WorkflowStatus) -> None:
        """Makes STATUS durable. If the PATCH fails, self.status stays as it was: nothing the plan meant
        to start has started, and the next plan starts it again."""
        after = status.dump()
        if after != self.written:
            await self.host.audit.durable()  # write-ahead: the audit trail never lags a checkpoint
            patch: dict[str, Any] = dict(after)
            for key in self.written:
                patch.setdefault(key, None)  # a merge patch removes a field only when told to
            await self._patch({"status": patch}, status=True)
            self.host.metrics.status_writes.inc()
            self.written = after
            self.status_shown = False  # until the watch shows this write
            self.unwritten_since = None
        self.status = status

    async def _ensure_finalizer(self) -> None:
        if self.finalizer_set:
            return
        others = [f for f in self.finalizers if f != FINALIZER]
        metadata: dict[str, Any] = {"finalizers": [*others, FINALIZER]}
        if self.labelled_finished or self.wrote_finished_label:  # work again (a rollback): watched again,
            metadata["labels"] = {FINISHED_LABEL: None}  # so that a restart resumes it
        await self._patch({"metadata": metadata})
        self.finalizer_set = True
        self.labelled_finished = self.wrote_finished_label = False

    async def _remove_finalizer(self) -> None:
        if not self.finalizer_set:
            return
        # Echoes of earlier writes may still show our finalizer in self.finalizers: keep the others only.
        others = [f for f in self.finalizers if f != FINALIZER]

        def patch() -> dict[str, Any]:
            # Decided again on every try: a 409 retry may bring a rollback asked for meanwhile.
            metadata: dict[str, Any] = {"finalizers": others or None}
            self.wrote_finished_label = self._done_for_good()
            self.left_watch = False
            if self.wrote_finished_label:
                metadata["labels"] = {FINISHED_LABEL: "true"}
            return {"metadata": metadata}

        try:
            await self._patch(patch)
        except ApiException as error:
            if error.status != 404:
                raise
            self.wrote_finished_label = False  # it was deleted: the watch shows a deletion
        self.finalizer_set = False

    def _done_for_good(self) -> bool:
        """Finished with nothing left to do here: no deletion under way, no rollback asked for (the finished
        label takes the workflow out of the operator's watch)."""
        rollback = self.spec.rollback and self.status.phase is WorkflowPhase.SUCCEEDED
        return self.status.phase in UNWATCHED_PHASES and not rollback and not self.ref.deleting

    async def _patch(self, patch: dict[str, Any] | Callable[[], dict[str, Any]], status: bool = False) -> None:
        """One merge PATCH of the workflow (of its status with STATUS), fenced by self.version. A conflict
        that someone else's change of spec or metadata caused (a rollback asked for, a label) is retried
        on the new version; one where the status moved on is another writer's, and raises Fenced. PATCH may
        be a function of this runner's state, called again for each try."""
        connection = self.host.connection
        write = connection.patch_workflow_status if status else connection.patch_workflow
        while True:
            body = patch() if callable(patch) else patch
            metadata = {**body.get("metadata", {}), "resourceVersion": self.version}
            try:
                written = await write(self.ref.namespace, self.ref.name, {**body, "metadata": metadata})
            except ApiException as error:
                if error.status != 409 or self.version is None:
                    raise
                fresh = await connection.custom.get_namespaced_custom_object(
                    API_GROUP, API_VERSION, self.ref.namespace, "workflows", self.ref.name
                )
                if dict(fresh.get("status") or {}) != self.written:
                    raise Fenced(fresh) from error
                self.version = (fresh.get("metadata") or {}).get("resourceVersion")
                self.update(kopf.Body(fresh))
                continue
            self.version = ((written or {}).get("metadata") or {}).get("resourceVersion") or self.version
            return

    # -- carrying out --------------------------------------------------------------------------------

    def _invocation(self, step: str, key: str, attempt: int) -> Invocation:
        return Invocation(
            self.ref.namespace,
            self.ref.name,
            step,
            key,
            attempt,
            self.workspace,
            self.principal.user,
            tuple(self.principal.groups),
            self.host.kube,
            self.ref.uid,
        )

    def _done(
        self,
        table: dict[str, asyncio.Task[None]],
        step: str,
        outcome: saga.ActionResult | saga.CompensationResult,
    ) -> None:
        # No await between these two lines: the loop never sees the step neither in flight nor done.
        table.pop(step, None)
        self.outcomes.append(outcome)
        self.wakeup.set()

    def _secret_paths(self, step: str, compensation: bool = False) -> list[secrets.Path]:
        """Where the spec wrote secret references for STEP's call (its inputs, or the compensation
        template that rendered its compensation's inputs): only there are references resolved."""
        spec = next((s for s in self.spec.steps if s.name == step), None)
        if spec is None:
            return []
        if not compensation:
            return secrets.ref_paths(spec.inputs)
        chosen = compensation_of(spec, self.host.capabilities)
        return secrets.ref_paths(chosen.inputs) if chosen else []

    async def _act(self, action: saga.RunAction) -> None:
        started = time.monotonic()
        inv = self._invocation(action.step, action.idempotency_key, action.attempt)
        scrub = secrets.Scrubber(())
        try:
            handler = self.host.handler(action.capability)
            # Secret values exist only here, in memory, for the call: status, events, logs and the
            # compensation's inputs keep the references, and whatever comes back is scrubbed of them.
            resolved = await secrets.resolve(action.inputs, inv, self._secret_paths(action.step))
            scrub = resolved.scrubber
            with secrets.scrubbing_logs(scrub):
                call = handler(resolved.inputs, inv)
                outputs = await (asyncio.wait_for(call, action.timeout) if action.timeout else call)
            outcome = saga.ActionResult(action.step, True, action.inputs, scrub(outputs))
        except TimeoutError:
            outcome = saga.ActionResult(
                action.step, False, action.inputs, error=f"timed out after {action.timeout} s", timed_out=True
            )
        except asyncio.CancelledError:
            outcome = saga.ActionResult(
                action.step,
                False,
                action.inputs,
                error="cut off: the workflow's deadline passed",
                cancelled=True,
            )
        except CapabilityError as error:
            outcome = saga.ActionResult(
                action.step, False, action.inputs, error=scrub.text(str(error)), retryable=error.retryable
            )
        except Exception as error:  # a handler bug must fail the step, never the operator
            with secrets.scrubbing_logs(scrub):
                log.exception("step %s failed unexpectedly", action.step, extra=self._log_context(action.step))
            outcome = saga.ActionResult(
                action.step, False, action.inputs, error=scrub.text(f"{type(error).__name__}: {error}")
            )
        metrics = self.host.metrics
        metrics.steps.labels(action.capability).inc()
        if action.attempt > 1 and not action.recovered:
            metrics.step_retries.labels(action.capability).inc()
        if not outcome.ok:
            metrics.step_failures.labels(action.capability).inc()
        result = "succeeded" if outcome.ok else "failed"
        metrics.step_duration.labels(action.capability, result).observe(time.monotonic() - started)
        self._audit(
            AuditKind.STEP_FINISHED,
            action.step,
            capability=action.capability,
            attempt=action.attempt,
            result=result,
            outputs=outcome.outputs,
            error=outcome.error,
            seconds=round(time.monotonic() - started, 3),
        )
        self._done(self.actions, action.step, outcome)

    async def _compensate(self, compensation: saga.RunCompensation) -> None:
        inv = dataclasses.replace(
            self._invocation(compensation.step, compensation.idempotency_key, compensation.attempt),
            forward_in_doubt=bool(self.status.step(compensation.step).in_doubt),
        )
        scrub = secrets.Scrubber(())
        try:
            handler = self.host.handler(compensation.capability)
            paths = self._secret_paths(compensation.step, compensation=True)
            resolved = await secrets.resolve(compensation.inputs, inv, paths)
            scrub = resolved.scrubber
            with secrets.scrubbing_logs(scrub):
                await handler(resolved.inputs, inv)
            outcome = saga.CompensationResult(compensation.step, True)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if not isinstance(error, CapabilityError):
                with secrets.scrubbing_logs(scrub):
                    log.exception(
                        "compensation of %s failed unexpectedly",
                        compensation.step,
                        extra=self._log_context(compensation.step),
                    )
            outcome = saga.CompensationResult(compensation.step, False, scrub.text(f"{error}"))
        result = "succeeded" if outcome.ok else "failed"
        self.host.metrics.compensations.labels(compensation.capability, result).inc()
        self._audit(
            AuditKind.COMPENSATION_FINISHED,
            compensation.step,
            actor=self._undo_actor(),
            capability=compensation.capability,
            attempt=compensation.attempt,
            result=result,
            error=outcome.error,
        )
        self._done(self.compensations, compensation.step, outcome)
