"""Approval objects: created by the operator for each gated step, owned by their Workflow."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from controller import API_GROUP, API_VERSION
from controller.api.approval import DECISIONS, ApprovalNotice, ApprovalPhase, approval_phase
from controller.api.metadata import DECIDED_BY_ANNOTATION, NOTIFY_ANNOTATION, WORKFLOW_LABEL
from controller.api.workflow import EventType
from controller.engine import saga
from controller.operator.kube import Connection
from controller.operator.notify import Notifier, approval_message


def manifest(ref: saga.WorkflowRef, request: saga.RequestApproval, requested_by: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "workflow": ref.name,
        "step": request.step,
        "message": request.message,
        "inputs": request.inputs,
        "requestedBy": requested_by,
        "expiresAt": saga.iso(request.expires_at),
    }
    if request.capability:
        spec["capability"] = request.capability
    if request.risk:
        spec["riskLevel"] = request.risk.value
    if request.inputs_hash:
        spec["inputsHash"] = request.inputs_hash
    if request.compensation:
        spec["compensation"] = {
            "capability": request.compensation.capability,
            "riskLevel": request.compensation.risk.value,
        }
    if request.approvers and (request.approvers.users or request.approvers.groups or request.approvers.count > 1):
        spec["approvers"] = request.approvers.model_dump(exclude_defaults=True)
    annotations = {NOTIFY_ANNOTATION: request.notify_url} if request.notify_url else {}
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "Approval",
        "metadata": {
            "name": request.name,
            "namespace": ref.namespace,
            "labels": {WORKFLOW_LABEL: ref.name},
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": f"{API_GROUP}/{API_VERSION}",
                    "kind": "Workflow",
                    "name": ref.name,
                    "uid": ref.uid,
                    "controller": True,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "spec": spec,
    }


class ApprovalNameTaken(Exception):
    """The Approval's name belongs to an Approval of another, existing workflow (never deleted)."""


async def create(
    connection: Connection, ref: saga.WorkflowRef, request: saga.RequestApproval, requested_by: str = ""
) -> dict[str, Any] | None:
    """The created Approval, or None when this workflow created it already (before a restart). An orphan
    (its Workflow, by uid, is gone: an earlier workflow of the same name) is replaced: its decision was
    about another workflow. Any other Approval of that name is left alone and ApprovalNameTaken raised."""
    body = manifest(ref, request, requested_by)
    for _ in range(3):
        try:
            created: dict[str, Any] = await connection.custom.create_namespaced_custom_object(
                API_GROUP, API_VERSION, ref.namespace, "approvals", body
            )
            break
        except ApiException as error:
            if error.status != 409:
                raise
        try:
            existing: Any = await connection.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, ref.namespace, "approvals", request.name
            )
        except ApiException as error:
            if error.status == 404:  # deleted meanwhile: create it again
                continue
            raise
        if owner_uid(existing) == ref.uid:
            return None
        owner = await _live_owner(connection, ref.namespace, existing)
        if owner is not None:
            raise ApprovalNameTaken(
                f"approval {request.name} already exists and belongs to {owner}; it is not replaced"
            )
        await _delete_exactly(connection, ref.namespace, existing)
    else:
        raise RuntimeError(f"approval {request.name} could not be created")
    updated: dict[str, Any] = await _set_status(
        connection, ref.namespace, request.name, {"phase": ApprovalPhase.PENDING.value}
    )
    return updated or created


async def _live_owner(connection: Connection, namespace: str, approval: Mapping[str, Any]) -> str | None:
    """What still owns APPROVAL ("workflow NAME", or a description of an Approval no Workflow owns),
    None when it is an orphan: the Workflow its owner reference names (by uid) no longer exists."""
    uid = owner_uid(approval)
    owner = next(
        (o for o in (approval.get("metadata") or {}).get("ownerReferences") or [] if o.get("kind") == "Workflow"),
        None,
    )
    if not uid or owner is None:
        return "no workflow (it was not created by the operator)"
    try:
        workflow: Any = await connection.custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "workflows", str(owner.get("name", ""))
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    if (workflow.get("metadata") or {}).get("uid") != uid:
        return None  # a newer workflow of the same name: the owner is gone
    return f"workflow {owner.get('name')}"


async def _delete_exactly(connection: Connection, namespace: str, approval: Mapping[str, Any]) -> None:
    """Deletes this very object (uid and resourceVersion preconditions): never one created meanwhile."""
    meta = approval.get("metadata") or {}
    options = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(uid=meta.get("uid"), resource_version=meta.get("resourceVersion"))
    )
    try:
        await connection.custom.delete_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "approvals", str(meta.get("name", "")), body=options
        )
    except ApiException as error:
        if error.status not in (404, 409):  # gone, or changed meanwhile: look again
            raise


async def expire(connection: Connection, namespace: str, name: str) -> dict[str, Any]:
    return await _set_status(
        connection, namespace, name, {"phase": ApprovalPhase.EXPIRED.value, "decidedAt": saga.iso(datetime.now(UTC))}
    )


async def record_decision(
    connection: Connection,
    namespace: str,
    name: str,
    phase: ApprovalPhase,
    decided_by: str | None,
    reason: str | None,
    votes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase.value, "decidedAt": saga.iso(datetime.now(UTC))}
    if votes:
        status["decisions"] = votes
    if decided_by:
        status["decidedBy"] = decided_by
    if reason:
        status["reason"] = reason
    return await _set_status(connection, namespace, name, status)


async def _set_status(connection: Connection, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await connection.merge_patch(
        "approvals", namespace, name, {"status": dict(status)}, status=True
    )
    return result


def announce(notifier: Notifier | None, event: ApprovalNotice, approval: Mapping[str, Any]) -> None:
    """Tells the story of the approval: a Kubernetes Event on it (kubectl describe approval), and the
    notification, if its rule or step named a webhook URL."""
    spec, status = approval.get("spec") or {}, approval.get("status") or {}
    what = f"step {spec.get('step')} of workflow {spec.get('workflow')}"
    if spec.get("capability"):
        what += f": {spec['capability']} ({spec.get('riskLevel', '?')} risk)"
    if event is ApprovalNotice.REQUESTED:
        reason, message = "ApprovalRequested", f"{what}, requested by {spec.get('requestedBy') or 'unknown'}"
    elif event is ApprovalNotice.EXPIRED:
        reason, message = "Expired", f"{what}: nobody decided before {spec.get('expiresAt')}"
    else:
        phase = status.get("phase") or spec.get("decision") or "Decided"
        reason, message = phase, f"{what}: {phase.lower()} by {status.get('decidedBy') or 'unknown'}"
    kopf.event(
        approval,  # type: ignore[arg-type]
        type=EventType.WARNING if event is ApprovalNotice.EXPIRED else EventType.NORMAL,
        reason=reason,
        message=message,
    )
    url = ((approval.get("metadata") or {}).get("annotations") or {}).get(NOTIFY_ANNOTATION)
    if notifier is None or not url:
        return

    def failed(error: str) -> None:
        kopf.event(
            approval,  # type: ignore[arg-type]
            type=EventType.WARNING,
            reason="NotificationFailed",
            message=f"{event} notification: {error}",
        )

    namespace = (approval.get("metadata") or {}).get("namespace") or ""
    notifier.send(url, approval_message(event, approval), failed, namespace=namespace)


def deciders(spec: Mapping[str, Any]) -> str | None:
    """Who decided a quorum Approval: the people whose votes decided it ("alice, carol"), None before
    that or without votes (the webhook recorded the single decider)."""
    votes = spec.get("votes") or []
    decision = spec.get("decision") or ""
    if not votes or not decision:
        return None
    return ", ".join(dict.fromkeys(str(v.get("user")) for v in votes if v.get("decision") == decision)) or None


def decisions(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The votes of a quorum Approval as status.decisions (user, decision, at, reason)."""
    keys = ("user", "decision", "at", "reason")
    return [{k: v[k] for k in keys if v.get(k)} for v in spec.get("votes") or [] if isinstance(v, Mapping)]


async def record_decisions(connection: Connection, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
    await _set_status(connection, namespace, name, {"decisions": decisions(spec)})


def owner_uid(body: Mapping[str, Any]) -> str:
    """The uid of the Workflow that owns this Approval ("" when none does)."""
    for owner in (body.get("metadata") or {}).get("ownerReferences") or []:
        if owner.get("kind") == "Workflow":
            return str(owner.get("uid", ""))
    return ""


def state_of(body: Mapping[str, Any]) -> saga.ApprovalState:
    """What the engine needs to know of an Approval. The decision in spec counts as soon as it is
    written (the admission webhook has checked who wrote it); an expired request stays expired."""
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    phase = approval_phase(status.get("phase"))
    decision = spec.get("decision") or ""
    if phase is ApprovalPhase.PENDING and decision in DECISIONS:
        phase = ApprovalPhase(decision)
    return saga.ApprovalState(
        name=body.get("metadata", {}).get("name", ""),
        phase=phase,
        inputs_hash=spec.get("inputsHash"),
        expires_at=saga.parse_time(spec.get("expiresAt")),
        decided_by=deciders(spec)
        or status.get("decidedBy")
        or (body.get("metadata", {}).get("annotations") or {}).get(DECIDED_BY_ANNOTATION),
        requested_at=saga.parse_time(body.get("metadata", {}).get("creationTimestamp")),
        compensation=(spec.get("compensation") or {}).get("capability"),
    )
