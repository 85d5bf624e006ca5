"""Admission webhooks (served by the operator through kopf): identities come from the API server's
authentication of the request, never from its body.

Workflow CREATE   records the creator as the principal (annotations; whatever the body claims is
                  overwritten), adds the saga finalizer, refuses cycles and unknown capabilities.
Workflow UPDATE   refuses changes to the recorded principal, and removal of the saga finalizer by
                  anyone but the operator while the workflow is not finished.
Approval UPDATE   records who decided (annotation), refuses self-approval, approvers the policy does
                  not name, and any change to a decided Approval.

Handler IDs are the webhooks' URL paths (kopf serves /ID): hyphens, not underscores, because a webhook reached
through a Service (the Helm chart) must have a path of RFC 1123 segments.

All of them are persistent (failurePolicy Fail, left in place when the operator stops): while the
operator is down, nobody can create a workflow or decide an approval with an unrecorded identity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from controller import API_GROUP, API_VERSION
from controller.api.policy import Approvers
from controller.api.workflow import TERMINAL_PHASES, WorkflowSpec
from controller.capabilities import custom
from controller.engine.saga import spec_errors
from controller.operator.runtime import FINALIZER, GROUPS_ANNOTATION, PRINCIPAL_ANNOTATION, WorkflowRuntime
from controller.policy.approvers import decision_refusal

DECIDED_BY_ANNOTATION = "aifirst.dev/decided-by"
IDENTITY_ANNOTATIONS = (PRINCIPAL_ANNOTATION, GROUPS_ANNOTATION)


def _without_rollback(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (spec or {}).items() if k != "rollback"}


def _annotations(body: Mapping[str, Any] | None) -> Mapping[str, str]:
    return (body or {}).get("metadata", {}).get("annotations") or {}


def _user(userinfo: Mapping[str, Any]) -> tuple[str, list[str]]:
    return str(userinfo.get("username", "")), [str(g) for g in userinfo.get("groups") or []]


def register(
    registry: kopf.OperatorRegistry,
    runtime: WorkflowRuntime,
    operator_user: str,
    bind: Callable[[Mapping[str, Any]], None],
) -> None:
    @kopf.on.mutate(
        API_GROUP,
        API_VERSION,
        "workflows",
        operations={"CREATE"},
        registry=registry,
        persistent=True,
        id="workflow-principal",
    )
    def workflow_principal(body: kopf.Body, patch: kopf.Patch, userinfo: Mapping[str, Any], **_: Any) -> None:
        user, groups = _user(userinfo)
        patch.setdefault("metadata", {}).setdefault("annotations", {})
        patch["metadata"]["annotations"][PRINCIPAL_ANNOTATION] = user
        patch["metadata"]["annotations"][GROUPS_ANNOTATION] = ",".join(groups)
        finalizers = list(body.metadata.get("finalizers") or [])
        if FINALIZER not in finalizers:
            # Added at creation: deleting a running workflow always compensates it first, and the
            # operator spends no write on it.
            patch["metadata"]["finalizers"] = [*finalizers, FINALIZER]

    @kopf.on.validate(
        API_GROUP,
        API_VERSION,
        "workflows",
        operations={"CREATE"},
        registry=registry,
        persistent=True,
        id="workflow-runnable",
    )
    async def workflow_runnable(spec: kopf.Spec, **kwargs: Any) -> None:
        bind(kwargs)  # the custom capabilities of the cluster count too
        await check_runnable(spec)

    async def check_runnable(spec: Mapping[str, Any]) -> None:
        """The checks that span the whole spec: here rather than CEL rules on the CRD, which the API server
        would evaluate again on every status write (see docs/architecture.md)."""
        try:
            parsed = WorkflowSpec.model_validate(dict(spec))
        except ValidationError as error:
            raise kopf.AdmissionError(f"spec: {error}", code=422) from error
        known = await runtime.fetch_missing_capabilities(parsed)
        errors = spec_errors(parsed, known)
        if errors:
            raise kopf.AdmissionError("; ".join(errors), code=422)

    @kopf.on.validate(
        API_GROUP,
        API_VERSION,
        "workflows",
        operations={"UPDATE"},
        registry=registry,
        persistent=True,
        id="workflow-update",
    )
    async def workflow_update(body: kopf.Body, spec: kopf.Spec, userinfo: Mapping[str, Any], **kwargs: Any) -> None:
        """Every update in one webhook call: identities frozen, the finalizer kept, the spec immutable once
        started (except rollback) and runnable while it may still change."""
        bind(kwargs)
        old: Mapping[str, Any] | None = kwargs.get("old")
        user, _groups = _user(userinfo)
        before, after = _annotations(old), _annotations(body)
        for key in IDENTITY_ANNOTATIONS:
            if before.get(key) != after.get(key):
                raise kopf.AdmissionError(
                    f"metadata.annotations[{key}] is recorded from the API server's authentication "
                    "when the workflow is created and cannot be changed",
                    code=403,
                )
        had = FINALIZER in ((old or {}).get("metadata", {}).get("finalizers") or [])
        has = FINALIZER in (body.metadata.get("finalizers") or [])
        phase = ((old or {}).get("status") or {}).get("phase")
        finished = phase in {p.value for p in TERMINAL_PHASES}
        if had and not has and user != operator_user and not finished:
            raise kopf.AdmissionError(
                f"the finalizer {FINALIZER} guarantees compensation; only the operator removes it "
                "(delete the workflow, or set spec.rollback: true)",
                code=403,
            )
        if _without_rollback((old or {}).get("spec")) == _without_rollback(spec):
            return  # metadata or rollback only: never blocked by, say, a capability deleted since
        if (phase or "Pending") != "Pending":
            raise kopf.AdmissionError(
                "spec is immutable once the workflow has started; only spec.rollback may change", code=422
            )
        await check_runnable(spec)

    @kopf.on.mutate(
        API_GROUP,
        API_VERSION,
        "approvals",
        operations={"UPDATE"},
        registry=registry,
        persistent=True,
        id="approval-decider",
    )
    def approval_decider(body: kopf.Body, patch: kopf.Patch, userinfo: Mapping[str, Any], **kwargs: Any) -> None:
        old: Mapping[str, Any] | None = kwargs.get("old")
        before = ((old or {}).get("spec") or {}).get("decision") or ""
        after = (body.get("spec") or {}).get("decision") or ""
        if not before and after:
            user, _groups = _user(userinfo)
            patch.setdefault("metadata", {}).setdefault("annotations", {})[DECIDED_BY_ANNOTATION] = user

    @kopf.on.validate(
        API_GROUP,
        API_VERSION,
        "approvals",
        operations={"UPDATE"},
        registry=registry,
        persistent=True,
        id="approval-decision",
    )
    def approval_decision(body: kopf.Body, userinfo: Mapping[str, Any], **kwargs: Any) -> None:
        old: Mapping[str, Any] | None = kwargs.get("old")
        user, groups = _user(userinfo)
        old_spec = (old or {}).get("spec") or {}
        spec = body.get("spec") or {}
        before, after = old_spec.get("decision") or "", spec.get("decision") or ""
        old_by, new_by = _annotations(old).get(DECIDED_BY_ANNOTATION), _annotations(body).get(DECIDED_BY_ANNOTATION)
        if before and before != after:
            raise kopf.AdmissionError("the decision of an Approval is final and cannot be changed", code=403)
        if not before and after:
            approvers = Approvers.model_validate(spec["approvers"]) if spec.get("approvers") else None
            refusal = decision_refusal(
                requested_by=spec.get("requestedBy") or "", approvers=approvers, user=user, groups=groups
            )
            if refusal:
                raise kopf.AdmissionError(refusal, code=403)
            if new_by != user:
                raise kopf.AdmissionError(f"{DECIDED_BY_ANNOTATION} must name the deciding user", code=403)
        elif old_by != new_by:
            raise kopf.AdmissionError(
                f"metadata.annotations[{DECIDED_BY_ANNOTATION}] is recorded from the API server's "
                "authentication and cannot be changed",
                code=403,
            )

    @kopf.on.validate(
        API_GROUP,
        API_VERSION,
        "capabilities",
        operations=["CREATE", "UPDATE"],
        registry=registry,
        persistent=True,
        id="capability-coherent",
    )
    def capability_coherent(name: str, spec: kopf.Spec, **kwargs: Any) -> None:
        bind(kwargs)
        try:
            parsed = custom.parse(name, spec)
        except custom.InvalidCapability as error:
            raise kopf.AdmissionError(str(error), code=422) from error
        problems = custom.problems_with(parsed, {**runtime.capabilities, name: parsed}, runtime.builtin)
        if problems:
            raise kopf.AdmissionError(f"capability {name}: " + "; ".join(problems), code=422)
        if parsed.http and parsed.http.auth and isinstance(kwargs.get("warnings"), list):
            ref = parsed.http.auth.secret_ref  # read from the operator's namespace, whatever the author meant
            kwargs["warnings"].append(
                f"spec.http.auth: the operator reads key {ref.key!r} of Secret {ref.name!r} in its own "
                f"namespace {custom.CREDENTIALS.namespace!r}"
            )
