"""Transactions of agents that act one call at a time (DESIGN section 6): the operator's side.

- A task per unfinished Transaction carries out what the pure core (controller.engine.transaction) decides:
  open it, close it, roll it back when asked or once its TTL passed, by setting spec.rollback on ONE call
  (workflow) at a time, newest completion first, so each is compensated by its own saga, governed as any
  compensation. Everything it reads is in the API (the Transaction's status, the labelled workflows and
  their spec.rollback), so an operator restarted mid-rollback, or started after a TTL passed, carries on.
- Admission: the creator of a Transaction is recorded and signed like a Workflow's principal; only that
  principal may commit it, roll it back or delete it while it is open, and only that principal's workflows
  may join it (label aifirst.dev/transaction, checked when the workflow is created; the label cannot change
  afterwards). kubectl goes through the same webhooks as the MCP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from controller import API_GROUP, API_VERSION
from controller.api.audit import AuditKind
from controller.api.transaction import (
    FINISHED_PHASES,
    JOINED_ANNOTATION,
    MAX_CALLS,
    TRANSACTION_LABEL,
    TransactionPhase,
    TransactionSpec,
    TransactionStatus,
)
from controller.engine import transaction as core
from controller.engine.shards import shard_of
from controller.engine.state import parse_time
from controller.operator import attestation
from controller.operator.identities import identity_change, user_of
from controller.operator.runner import principal_of
from controller.operator.runtime import WorkflowRuntime

PLURAL = "transactions"
RETRY_SECONDS = 2.0
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
ADMINS = "system:masters"
log = logging.getLogger("airun.transactions")


def _now() -> datetime:
    return datetime.now(UTC)


def _phase(body: Mapping[str, Any]) -> TransactionPhase | None:
    value = (body.get("status") or {}).get("phase")
    try:
        return TransactionPhase(value) if value else None
    except ValueError:
        return None


def owner_of(key: bytes, body: Mapping[str, Any]) -> str:
    """The principal that began the transaction BODY: the operator's record, or the webhook's attestation
    before the operator wrote one; "" when nothing verifies."""
    return principal_of(body, key).user


class TransactionRuntime:
    """One asyncio task per unfinished Transaction of this process."""

    def __init__(self, runtime: WorkflowRuntime) -> None:
        self.rt = runtime
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.wakeups: dict[str, asyncio.Event] = {}
        self.names: dict[tuple[str, str], str] = {}  # (namespace, name) -> uid

    def observe(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        uid, namespace, name = str(meta.get("uid") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or "")
        phase = _phase(body)
        spec = body.get("spec") or {}
        if phase in FINISHED_PHASES or (phase is TransactionPhase.COMMITTED and not spec.get("rollback")):
            return
        if not self.rt.shards.owns(uid):
            return  # another replica's (controller/operator/shards.py)
        self.names[(namespace, name)] = uid
        event = self.wakeups.setdefault(uid, asyncio.Event())
        event.set()
        task = self.tasks.get(uid)
        if task is None or task.done():
            self.tasks[uid] = asyncio.create_task(
                self._drive(namespace, name, uid), name=f"transaction {namespace}/{name}"
            )

    async def adopt_shard(self, shard: int) -> None:
        """This replica took SHARD: its unfinished Transactions are read again and driven here."""
        listed = await self.rt.connection.custom.list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL)
        for item in listed.get("items") or []:
            if shard_of(str(item["metadata"]["uid"]), self.rt.shards.count) == shard:
                self.observe(item)

    async def drop_shard(self, shard: int) -> None:
        """This replica lost SHARD: its Transactions' tasks stop (another replica carries on from status)."""
        uids = [uid for uid in self.tasks if shard_of(uid, self.rt.shards.count) == shard]
        tasks = [self.tasks.pop(uid) for uid in uids]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for key in [k for k, uid in self.names.items() if uid in uids]:
            del self.names[key]
        for uid in uids:
            self.wakeups.pop(uid, None)

    def forget(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        self.names.pop((str(meta.get("namespace") or ""), str(meta.get("name") or "")), None)
        task = self.tasks.pop(uid, None)
        self.wakeups.pop(uid, None)
        if task is not None:
            task.cancel()

    def wake(self, namespace: str, name: str) -> None:
        uid = self.names.get((namespace, name))
        if uid and uid in self.wakeups:
            self.wakeups[uid].set()

    async def shutdown(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drive(self, namespace: str, name: str, uid: str) -> None:
        delay = RETRY_SECONDS
        try:
            while True:
                event = self.wakeups.setdefault(uid, asyncio.Event())
                event.clear()  # before looking: news that arrive while it looks wake the next wait at once
                try:
                    wake_at = await self._step(namespace, name, uid)
                    if wake_at is None:
                        return
                    delay = RETRY_SECONDS
                except ApiException as error:
                    if error.status == 404:
                        return
                    if error.status == 409:  # changed since it was read: plan again from what is there now
                        continue
                    log.warning("transaction %s/%s: API error %s (%s)", namespace, name, error.status, error.reason)
                    wake_at = _now() + timedelta(seconds=delay)
                    delay = min(delay * 2, 30.0)
                except (OSError, TimeoutError, aiohttp.ClientError) as error:
                    log.warning("transaction %s/%s: %s", namespace, name, error)
                    wake_at = _now() + timedelta(seconds=delay)
                    delay = min(delay * 2, 30.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), max(0.0, (wake_at - _now()).total_seconds()))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("transaction %s/%s: the task failed; it resumes on the next event", namespace, name)
        finally:
            if self.tasks.get(uid) is asyncio.current_task():
                self.tasks.pop(uid, None)

    async def _step(self, namespace: str, name: str, uid: str) -> datetime | None:
        """One look at the transaction and its calls; returns when to look again (None: finished)."""
        custom = self.rt.connection.custom
        body: Any = await custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
        if body["metadata"].get("uid") != uid:
            return None
        listed: Any = await custom.list_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "workflows", label_selector=f"{TRANSACTION_LABEL}={name}"
        )
        key = self.rt.attestation_key
        calls = [core.view_of(o, principal_of(o, key).user) for o in listed.get("items") or []]
        before = TransactionStatus.model_validate(body.get("status") or {})
        world = core.TransactionWorld(
            name=name,
            spec=TransactionSpec.model_validate(body.get("spec") or {}),
            status=before,
            created_at=parse_time(body["metadata"].get("creationTimestamp")) or _now(),
            principal=owner_of(key, body),
            calls=calls,
            now=_now(),
        )
        result = core.plan(world)
        if result.ignored:
            log.warning(
                "transaction %s/%s: ignoring workflows of another principal labelled with it: %s",
                namespace,
                name,
                ", ".join(result.ignored),
            )
        await self._write(namespace, name, body, result.status)
        self._record(body, before, result)
        for workflow in result.rollback:
            try:
                await self.rt.connection.patch_workflow(namespace, workflow, {"spec": {"rollback": True}})
            except ApiException as error:
                if error.status != 404:
                    raise
        if result.finished:
            return None
        return result.wake_at or (_now() + timedelta(seconds=30))

    async def _write(self, namespace: str, name: str, body: Mapping[str, Any], status: TransactionStatus) -> None:
        """The status as planned from BODY, fenced by BODY's resourceVersion: if anything changed since it
        was read (another replica's write among others) the PATCH fails with 409 and the step is planned
        again from what is there now."""
        written = body.get("status") or {}
        after = status.dump()
        if after == dict(written):
            return
        patch: dict[str, Any] = dict(after)
        for key in written:
            patch.setdefault(key, None)  # a merge patch removes a field only when told to
        await self.rt.audit.durable()  # write-ahead, as for workflows
        version = (body.get("metadata") or {}).get("resourceVersion")
        fenced = {"metadata": {"resourceVersion": version}, "status": patch}
        await self.rt.connection.merge_patch(PLURAL, namespace, name, fenced, status=True)

    def _record(self, body: Mapping[str, Any], before: TransactionStatus, result: core.TransactionPlan) -> None:
        meta = body.get("metadata") or {}
        after = result.status
        for event in result.events:
            log.log(logging.WARNING if event.type == "Warning" else logging.INFO, "%s: %s", event.reason, event.message)
            with contextlib.suppress(Exception):  # outside a kopf handler's context there is nowhere to post
                kopf.event(dict(body), type=event.type, reason=event.reason, message=event.message)  # type: ignore[arg-type]
        if after.phase is before.phase and after.undone == before.undone:
            return
        kinds = {
            TransactionPhase.OPEN: AuditKind.TRANSACTION_OPENED,
            TransactionPhase.COMMITTED: AuditKind.TRANSACTION_COMMITTED,
            TransactionPhase.ROLLING_BACK: AuditKind.TRANSACTION_ROLLBACK_STARTED,
        }
        kind = kinds.get(after.phase) if after.phase else None
        if after.phase is before.phase:
            kind = AuditKind.TRANSACTION_CALL_UNDONE
        elif after.phase in FINISHED_PHASES:
            kind = AuditKind.TRANSACTION_FINISHED
        if kind is None:
            return
        self.rt.audit.record(
            kind,
            namespace=str(meta.get("namespace") or ""),
            workflow=str(meta.get("name") or ""),
            workflow_uid=str(meta.get("uid") or ""),
            step=None,
            principal=after.principal,
            actor=after.rollback_requested_by if after.phase is TransactionPhase.ROLLING_BACK else None,
            payload={
                "transaction": meta.get("name"),
                "phase": after.phase.value if after.phase else None,
                "reason": after.reason.value if after.reason else None,
                "message": after.message,
                "undone": after.undone,
                "calls": [c.workflow for c in after.calls],
            },
        )


# -- admission -------------------------------------------------------------------------------------------------


def _labels(body: Mapping[str, Any] | None) -> Mapping[str, str]:
    return ((body or {}).get("metadata") or {}).get("labels") or {}


def transaction_of(body: Mapping[str, Any] | None) -> str | None:
    value = _labels(body).get(TRANSACTION_LABEL)
    return str(value) if value else None


def stamp_call(body: Mapping[str, Any], patch: kopf.Patch) -> None:
    """At a workflow's creation (mutating webhook): when it joined its transaction, to the microsecond (the
    call order; creationTimestamp has seconds only). Whatever the body says is overwritten or removed."""
    annotations = patch.setdefault("metadata", {}).setdefault("annotations", {})
    if transaction_of(body):
        annotations[JOINED_ANNOTATION] = _now().isoformat(timespec="microseconds").replace("+00:00", "Z")
    elif JOINED_ANNOTATION in (((body.get("metadata") or {}).get("annotations")) or {}):
        annotations[JOINED_ANNOTATION] = None


def label_change_refusal(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str | None:
    """A workflow joins a transaction when it is created, never later (nor leaves it)."""
    if transaction_of(old) != transaction_of(new):
        return (
            f"metadata.labels[{TRANSACTION_LABEL}] is set when the workflow is created (the call joins that "
            "transaction) and cannot be added, changed or removed afterwards"
        )
    before = (((old or {}).get("metadata") or {}).get("annotations") or {}).get(JOINED_ANNOTATION)
    if before != ((new.get("metadata") or {}).get("annotations") or {}).get(JOINED_ANNOTATION):
        return f"metadata.annotations[{JOINED_ANNOTATION}] is recorded by the admission webhook and cannot be changed"
    return None


def join_refusal(
    tx: Mapping[str, Any] | None, name: str, owner: str, user: str, calls: int, now: datetime
) -> str | None:
    """Why USER's new workflow may not join the transaction TX (None: it may)."""
    if tx is None:
        return f"transaction {name} does not exist in this namespace (begin one first)"
    if not owner:
        return f"transaction {name} has no attested principal: nothing may join it"
    if user != owner:
        return f"transaction {name} was begun by {owner}: only that principal may add calls to it, not {user}"
    spec = tx.get("spec") or {}
    phase = _phase(tx)
    if phase not in (None, TransactionPhase.OPEN) or spec.get("commit") or spec.get("rollback"):
        state = phase.value if phase else "closing"
        return f"transaction {name} is {state}: calls join open transactions only"
    created = parse_time((tx.get("metadata") or {}).get("creationTimestamp"))
    ttl = TransactionSpec.model_validate(spec).ttl_seconds
    if created is not None and now >= created + timedelta(seconds=ttl):
        return f"transaction {name} expired (ttlSeconds {ttl}): the operator rolls it back"
    if calls >= MAX_CALLS:
        return f"transaction {name} holds {MAX_CALLS} calls already: commit it and begin another"
    return None


async def check_call(runtime: WorkflowRuntime, namespace: str, body: Mapping[str, Any], user: str) -> None:
    """At a workflow's creation: the transaction it names must be open and its caller's own."""
    name = transaction_of(body)
    if name is None:
        return
    custom = runtime.connection.custom
    try:
        tx: Any = await custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
    except ApiException as error:
        if error.status != 404:
            raise kopf.AdmissionError(f"cannot read transaction {name}: {error.reason}", code=500) from error
        tx = None
    calls = 0
    if tx is not None:
        listed: Any = await custom.list_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "workflows", label_selector=f"{TRANSACTION_LABEL}={name}"
        )
        calls = len(listed.get("items") or [])
    owner = owner_of(runtime.attestation_key, tx) if tx is not None else ""
    refusal = join_refusal(tx, name, owner, user, calls, _now())
    if refusal:
        raise kopf.AdmissionError(refusal, code=403 if tx is not None and user != owner else 409)


def register(registry: kopf.OperatorRegistry, transactions: TransactionRuntime) -> None:
    """The Transaction handlers (watch events)."""

    @kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=registry, id="transaction_event")
    async def transaction_event(type: str, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            transactions.forget(body)
            return
        transactions.observe(body)

    @kopf.on.event(
        API_GROUP,
        API_VERSION,
        "workflows",
        labels={TRANSACTION_LABEL: kopf.PRESENT},
        registry=registry,
        id="transaction_call_event",
    )
    async def transaction_call_event(body: kopf.Body, namespace: str | None, **_: Any) -> None:
        name = transaction_of(body)
        if name and namespace:
            transactions.wake(namespace, name)


class TransactionAdmission:
    """The Transaction webhooks' handlers (listed with the others in controller.operator.admission.WEBHOOKS)."""

    def __init__(self, runtime: WorkflowRuntime, operator_user: str) -> None:
        self.runtime = runtime
        self.operator_user = operator_user

    def principal(
        self, body: kopf.Body, patch: kopf.Patch, userinfo: Mapping[str, Any], namespace: str | None, **_: Any
    ) -> None:
        """CREATE: the creator, recorded and signed like a Workflow's principal (whatever the body claims)."""
        user, groups = user_of(userinfo)
        name = body.metadata.name
        if not name:  # named here: the signature covers the exact name
            prefix = str(body.metadata.get("generateName") or "tx-")
            name = prefix + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
            patch.setdefault("metadata", {})["name"] = name
        signed = attestation.attest(self.runtime.attestation_key, namespace or "", name, user, groups, _now())
        patch.setdefault("metadata", {}).setdefault("annotations", {}).update(signed)

    def update(self, body: kopf.Body, userinfo: Mapping[str, Any], **kwargs: Any) -> None:
        """UPDATE: identities frozen; only the principal (or the operator) commits or rolls it back."""
        old: Mapping[str, Any] = kwargs.get("old") or {}
        user, _groups = user_of(userinfo)
        refusal = identity_change(old, body, "the transaction is begun")
        if refusal is not None:
            raise refusal
        if dict(old.get("spec") or {}) == dict(body.get("spec") or {}) or user == self.operator_user:
            return
        owner = owner_of(self.runtime.attestation_key, old)
        if user != owner:
            raise kopf.AdmissionError(
                f"transaction {body.metadata.name} was begun by {owner or 'nobody attested'}: only that principal "
                f"may commit it or roll it back, not {user}",
                code=403,
            )

    def deletion(self, body: kopf.Body, userinfo: Mapping[str, Any], **_: Any) -> None:
        """DELETE: while it is open or rolling back, only its principal (or the operator, or an admin)."""
        user, groups = user_of(userinfo)
        phase = _phase(body)
        if phase in FINISHED_PHASES or phase is TransactionPhase.COMMITTED:
            return
        owner = owner_of(self.runtime.attestation_key, body)
        if user not in (owner, self.operator_user) and ADMINS not in groups:
            state = phase.value if phase else "open"
            raise kopf.AdmissionError(
                f"transaction {body.metadata.name} of {owner or 'nobody attested'} is {state}: only its principal "
                f"may delete it before it is committed or rolled back, not {user}",
                code=403,
            )
