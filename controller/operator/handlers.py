"""Thin kopf handlers: they hand what the cluster says to the workflow runtime, and nothing more."""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from controller import API_GROUP, API_VERSION
from controller.api.approval import DECISIONS, ApprovalNotice, ApprovalPhase, approval_phase
from controller.api.audit import AuditKind
from controller.api.capability import CapabilitySpec
from controller.api.policy import Approvers, PolicyObject, PolicySpec
from controller.capabilities import custom
from controller.engine import saga
from controller.operator import approvals, capability_status, credentials
from controller.operator.runtime import WorkflowRuntime
from controller.policy.approvers import quorum, tally

ALL = "all"
log = logging.getLogger("airun.handlers")


# Indexes: kopf fills them before it calls any other handler, so no workflow is ever judged against a
# half-loaded set of policies. Each is a pure function of one object.


def cluster_policy_index(name: str, spec: kopf.Spec, **_: Any) -> dict[str, PolicyObject]:
    return {ALL: PolicyObject(name=name, spec=PolicySpec.model_validate(dict(spec)))}


def policy_index(name: str, namespace: str | None, spec: kopf.Spec, **_: Any) -> dict[str, PolicyObject]:
    return {ALL: PolicyObject(name=name, namespace=namespace, spec=PolicySpec.model_validate(dict(spec)))}


def approval_index(body: kopf.Body, namespace: str | None, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
    # Keyed by the owning workflow's uid, not its name: an Approval left by an earlier workflow of the
    # same name (garbage collection is asynchronous) must never decide for a new one.
    return {(namespace, approvals.owner_uid(body)): (spec.get("step"), approvals.state_of(body))}


def capability_index(name: str, spec: kopf.Spec, **_: Any) -> dict[str, CapabilitySpec]:
    try:
        return {ALL: custom.parse(name, spec)}
    except custom.InvalidCapability as error:  # refused at admission; older objects are skipped
        log.warning("ignoring %s", error)
        return {}


def bind_indexes(runtime: WorkflowRuntime, kwargs: Mapping[str, Any]) -> None:
    """Points the runtime at kopf's live indexes (handed to every handler as keyword arguments)."""
    cluster_policies: kopf.Index[str, PolicyObject] = kwargs["cluster_policy_index"]
    policies: kopf.Index[str, PolicyObject] = kwargs["policy_index"]
    approval_states: kopf.Index[Any, Any] = kwargs["approval_index"]
    capabilities: kopf.Index[str, CapabilitySpec] = kwargs["capability_index"]
    runtime.indexes.policies = lambda: [*cluster_policies.get(ALL, []), *policies.get(ALL, [])]
    runtime.indexes.bound = True

    def approvals_of(namespace: str, workflow_uid: str) -> dict[str, saga.ApprovalState]:
        return dict(approval_states.get((namespace, workflow_uid), []))

    runtime.indexes.approvals = approvals_of
    runtime.indexes.custom_capabilities = lambda: {c.id: c for c in capabilities.get(ALL, [])}
    runtime.indexes.pending_approvals = lambda: [
        (namespace, s.requested_at)
        for (namespace, _), store in approval_states.items()
        for _, s in store
        if s.phase is ApprovalPhase.PENDING
    ]


def register(registry: kopf.OperatorRegistry, runtime: WorkflowRuntime) -> Callable[[Mapping[str, Any]], None]:
    """Registers the handlers; returns the function that binds the runtime to kopf's indexes."""
    index = functools.partial(kopf.index, API_GROUP, API_VERSION, registry=registry)
    index("clusterpolicies", id="cluster_policy_index")(cluster_policy_index)
    index("policies", id="policy_index")(policy_index)
    index("approvals", id="approval_index")(approval_index)
    index("capabilities", id="capability_index")(capability_index)

    def bind(kwargs: Mapping[str, Any]) -> None:
        bind_indexes(runtime, kwargs)

    # on.event, not on.create/on.update: kopf's change-detecting handlers persist their progress with a
    # PATCH per handler, which would double the writes per step. The runtime keeps its own checkpoint
    # in .status (see docs/architecture.md).
    @kopf.on.event(API_GROUP, API_VERSION, "workflows", registry=registry, id="workflow_event")
    async def workflow_event(type: str, body: kopf.Body, **kwargs: Any) -> None:
        bind(kwargs)
        runtime.kopf_context = contextvars.copy_context()
        if type == "DELETED":
            await runtime.gone(body)
            return
        await runtime.observe(body)

    @kopf.on.event(API_GROUP, API_VERSION, "capabilities", registry=registry, id="capability_event")
    async def capability_event(type: str, name: str, body: kopf.Body, **kwargs: Any) -> None:
        bind(kwargs)  # kopf updated the index before this handler: it already has (or lost) NAME
        await capability_status.refresh(runtime, name, body, deleted=type == "DELETED")

    async def secret_changed(secret: str) -> None:
        await capability_status.secret_changed(runtime, secret)

    credentials.register(registry, runtime.connection.api, custom.CREDENTIALS, secret_changed)

    @kopf.on.event(API_GROUP, API_VERSION, "approvals", registry=registry, id="approval_event")
    async def approval_event(type: str, body: kopf.Body, namespace: str | None, spec: kopf.Spec, **_: Any) -> None:
        if type == "DELETED" or namespace is None:
            return
        if not runtime.shards.owns(approvals.owner_uid(body)):
            return  # the replica that runs the workflow records the decision (once, not once per replica)
        await record_approval_decision(runtime, body, namespace, spec)
        runtime.wake(namespace, spec.get("workflow") or "")

    return bind


async def record_approval_decision(
    runtime: WorkflowRuntime, body: Mapping[str, Any], namespace: str, spec: Mapping[str, Any]
) -> None:
    """Turns a decision written into an Approval's spec into its status, audited first.

    The audit record is made durable BEFORE the status write: an operator killed between the two finds
    the Approval still Pending on restart and records the decision again, so a decision is recorded at
    least once, never lost. A repeat is visible: it carries the same approvalUid and generation."""
    status = body.get("status") or {}
    metadata = body.get("metadata") or {}
    votes = approvals.decisions(spec)
    pending = approval_phase(status.get("phase")) is ApprovalPhase.PENDING
    if not spec.get("decision") and votes and votes != (status.get("decisions") or []) and pending:
        await record_votes(runtime, body, namespace, spec, votes, status.get("decisions") or [])
        return
    if spec.get("decision") not in DECISIONS or not pending:
        return
    decision = ApprovalPhase(spec["decision"])
    state = approvals.state_of(body)
    runtime.audit.record(
        AuditKind.APPROVAL_DECIDED,
        namespace=namespace,
        workflow=spec.get("workflow") or "",
        workflow_uid=approvals.owner_uid(body),
        step=spec.get("step"),
        principal=spec.get("requestedBy"),
        actor=state.decided_by,
        payload={
            "approval": metadata.get("name"),
            "approvalUid": metadata.get("uid"),
            "generation": metadata.get("generation"),
            "decision": decision.value,
            "reason": spec.get("reason"),
            "inputsHash": spec.get("inputsHash"),
            "capability": spec.get("capability"),
            **({"votes": votes} if votes else {}),
        },
    )
    await runtime.audit.durable()
    decided = await approvals.record_decision(
        runtime.connection,
        namespace,
        metadata.get("name") or "",
        decision,
        state.decided_by,
        spec.get("reason") or next((v.get("reason") for v in reversed(votes) if v.get("reason")), None),
        votes,
    )
    approvals.announce(runtime.notifier, ApprovalNotice.DECIDED, decided)
    created = saga.parse_time(metadata.get("creationTimestamp"))
    if created is not None:
        waited = (datetime.now(UTC) - created).total_seconds()
        runtime.metrics.approval_wait.labels(decision.value).observe(waited)


async def record_votes(
    runtime: WorkflowRuntime,
    body: Mapping[str, Any],
    namespace: str,
    spec: Mapping[str, Any],
    votes: list[dict[str, Any]],
    recorded: list[Any],
) -> None:
    """A vote on a quorum Approval that did not decide it yet: audited (each vote once; a repeat after a
    crash carries the same approvalUid and voter), then shown in status.decisions ("1 of 2")."""
    metadata = body.get("metadata") or {}
    for vote in votes[len(recorded) :]:
        runtime.audit.record(
            AuditKind.APPROVAL_VOTE,
            namespace=namespace,
            workflow=spec.get("workflow") or "",
            workflow_uid=approvals.owner_uid(body),
            step=spec.get("step"),
            principal=spec.get("requestedBy"),
            actor=vote.get("user"),
            payload={
                "approval": metadata.get("name"),
                "approvalUid": metadata.get("uid"),
                "decision": vote.get("decision"),
                "reason": vote.get("reason"),
                "inputsHash": spec.get("inputsHash"),
                "tally": tally(votes, quorum(Approvers.model_validate(spec.get("approvers") or {}))),
            },
        )
    await runtime.audit.durable()
    await approvals.record_decisions(runtime.connection, namespace, metadata.get("name") or "", spec)
