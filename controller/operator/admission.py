"""Admission webhooks (served by the operator through kopf): identities come from the API server's
authentication of the request, never from its body.

Workflow CREATE   records the creator as the principal (annotations, groups as a JSON list, signed with the
                  operator's attestation key; whatever the body claims is overwritten), names a workflow
                  created with generateName (the signature covers the name), adds the saga finalizer,
                  refuses cycles, unknown capabilities and ones that are not ready (a compensation or a
                  Secret not applied yet: GitOps order), and a call joining a Transaction (label
                  aifirst.dev/transaction) that is not open or not the creator's own.
Workflow UPDATE   records who set spec.rollback; refuses changes to the recorded identities and to the
                  transaction label, and removal of the saga finalizer by anyone but the operator while the
                  workflow is not finished.
Transaction       its creator recorded and signed; only they commit it, roll it back, or delete it while
                  open (controller/operator/transactions.py).
Workflow DELETE   records who deleted it (audit), so that its compensation names the actor.
Policy, ClusterPolicy CREATE/UPDATE
                  compiles and checks every rule's `when:` condition: a bad one is refused with its
                  position and message (controller/policy/conditions.py).
ConfigMap UPDATE  (the operator's circuit breakers only, by label) records who reset a breaker (audit);
                  refuses any other change by anyone but the operator.
Approval UPDATE   records who decided (annotation), refuses self-approval, approvers the policy does
                  not name, any change to a decided Approval, and any change (removal included) to what is
                  not the decision or its reason: the rest of spec, its owner, our labels and annotations.
                  With a quorum (approvers.count > 1) a person's decision is a vote (spec.votes).
Workflow CREATE   also refuses a principal whose denials opened the circuit breaker of a policy here.

Metadata-only updates never reach the UPDATE webhooks (matchConditions, controller/operator/webhooks.py).

Handler IDs are the webhooks' URL paths (kopf serves /ID): hyphens, not underscores, because a webhook reached
through a Service (the Helm chart) must have a path of RFC 1123 segments.

All of them but workflow-deletion are persistent (failurePolicy Fail, left in place when the operator stops):
while the operator is down, nobody can create a workflow or decide an approval with an unrecorded identity.
workflow-deletion only records; it must never keep anyone from deleting (failurePolicy Ignore).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import kopf
from pydantic import ValidationError

from controller import API_GROUP, API_VERSION
from controller.api.audit import AuditKind
from controller.api.metadata import (
    DECIDED_BY_ANNOTATION,
    FINALIZER,
    FINISHED_LABEL,
    PREFIX,
    PRINCIPAL_ANNOTATION,
    ROLLBACK_BY_ANNOTATION,
)
from controller.api.policy import Approvers, PolicySpec
from controller.api.workflow import TERMINAL_PHASES, UNWATCHED_PHASES, WorkflowPhase, WorkflowSpec
from controller.capabilities import custom
from controller.engine.validation import spec_errors
from controller.operator import attestation, transactions
from controller.operator import limits as policy_state
from controller.operator.identities import identity_change, user_of
from controller.operator.runtime import WorkflowRuntime
from controller.policy.approvers import decision_refusal, outcome, quorum, vote_refusal
from controller.policy.conditions import ConditionError, compile_condition
from controller.policy.limits import breakers_for

# What a person may change on an Approval: the decision and why (and, for a quorum, the votes, which the
# webhooks write from the decision). Everything else is what was approved.
DECISION_FIELDS = ("decision", "reason", "votes")
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the API server's own generateName alphabet


def _without_rollback(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (spec or {}).items() if k != "rollback"}


def _record_who_set(
    old: Mapping[str, Any] | None,
    body: Mapping[str, Any],
    field: str,
    patch: kopf.Patch,
    annotation: str,
    userinfo: Mapping[str, Any],
) -> None:
    """When spec.FIELD goes from unset to set, ANNOTATION names the authenticated user who set it."""
    before = ((old or {}).get("spec") or {}).get(field)
    after = (body.get("spec") or {}).get(field)
    if after and not before:
        user, _groups = user_of(userinfo)
        patch.setdefault("metadata", {}).setdefault("annotations", {})[annotation] = user


def _labels(body: Mapping[str, Any] | None) -> Mapping[str, str]:
    return (body or {}).get("metadata", {}).get("labels") or {}


def finished_label_refusal(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """The finished label takes a workflow out of the operator's watch: it may be added only to one that
    finished with nothing left to do (no saga finalizer, no rollback still to do); removing it is harmless
    (the workflow is watched again). webhooks.finished_label_guarded() is the same rule in CEL."""
    before, after = _labels(old).get(FINISHED_LABEL), _labels(new).get(FINISHED_LABEL)
    if after is None or after == before:
        return None
    phase = (old.get("status") or {}).get("phase")
    done = (
        after == "true"
        and FINALIZER not in ((new.get("metadata") or {}).get("finalizers") or [])
        and phase in UNWATCHED_PHASES
        and not ((new.get("spec") or {}).get("rollback") and phase == WorkflowPhase.SUCCEEDED)
    )
    if done:
        return None
    return (
        f"metadata.labels[{FINISHED_LABEL}] is set to 'true' by the operator once the workflow has finished "
        "(it stops watching it then); it cannot be set on a workflow that is running or being rolled back"
    )


def _annotations(body: Mapping[str, Any] | None) -> Mapping[str, str]:
    return (body or {}).get("metadata", {}).get("annotations") or {}


def _ours(values: Mapping[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (values or {}).items() if k.startswith(PREFIX)}


def _approvers(spec: Mapping[str, Any]) -> Approvers | None:
    return Approvers.model_validate(spec["approvers"]) if spec.get("approvers") else None


def policy_problems(spec: Mapping[str, Any]) -> list[str]:
    """What makes a Policy or ClusterPolicy spec unusable: its model, and each `when:` that does not
    compile or type-check (with the rule's index and the error's line and column)."""
    try:
        parsed = PolicySpec.model_validate(dict(spec))
    except ValidationError as error:
        return [f"spec: {error}"]
    problems = []
    for index, rule in enumerate(parsed.rules):
        if rule.when is None:
            continue
        try:
            compile_condition(rule.when)
        except ConditionError as error:
            problems.append(f"spec.rules[{index}].when: {error}")
    return problems


def approval_tampering(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """What an update changes on an Approval beyond its decision and reason (removal included), or None.
    The operator's own metadata counts: the owner (which workflow it decides for), our labels and our
    annotations other than decided-by (checked with the decision)."""
    old_spec, new_spec = dict(old.get("spec") or {}), dict(new.get("spec") or {})
    for key in sorted(set(old_spec) | set(new_spec)):
        if key not in DECISION_FIELDS and old_spec.get(key) != new_spec.get(key):
            return f"spec.{key}"
    old_meta, new_meta = old.get("metadata") or {}, new.get("metadata") or {}
    if (old_meta.get("ownerReferences") or []) != (new_meta.get("ownerReferences") or []):
        return "metadata.ownerReferences"
    old_labels, new_labels = _ours(old_meta.get("labels")), _ours(new_meta.get("labels"))
    for key in sorted(set(old_labels) | set(new_labels)):
        if old_labels.get(key) != new_labels.get(key):
            return f"metadata.labels[{key}]"
    old_notes, new_notes = _ours(old_meta.get("annotations")), _ours(new_meta.get("annotations"))
    for key in sorted((set(old_notes) | set(new_notes)) - {DECIDED_BY_ANNOTATION}):
        if old_notes.get(key) != new_notes.get(key):
            return f"metadata.annotations[{key}]"
    return None


def _transaction_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> kopf.AdmissionError | None:
    refusal = transactions.label_change_refusal(old, new)
    return kopf.AdmissionError(refusal, code=403) if refusal else None


def _rollback_actor_change(old: Mapping[str, Any], new: Mapping[str, Any], user: str) -> kopf.AdmissionError | None:
    """The rollback actor may change only with the request that sets spec.rollback, and only to its user."""
    before, after = _annotations(old), _annotations(new)
    rollback_set = bool((new.get("spec") or {}).get("rollback")) and not (old.get("spec") or {}).get("rollback")
    if before.get(ROLLBACK_BY_ANNOTATION) == after.get(ROLLBACK_BY_ANNOTATION) or (
        rollback_set and after.get(ROLLBACK_BY_ANNOTATION) == user
    ):
        return None
    return kopf.AdmissionError(
        f"metadata.annotations[{ROLLBACK_BY_ANNOTATION}] is recorded from the API server's "
        "authentication when spec.rollback is set and cannot be changed",
        code=403,
    )


def _finalizer_removal(
    old: Mapping[str, Any], new: Mapping[str, Any], user: str, operator_user: str
) -> kopf.AdmissionError | None:
    """Only the operator removes the saga finalizer of a workflow that has not finished."""
    had = FINALIZER in ((old.get("metadata") or {}).get("finalizers") or [])
    has = FINALIZER in ((new.get("metadata") or {}).get("finalizers") or [])
    finished = (old.get("status") or {}).get("phase") in TERMINAL_PHASES
    if had and not has and user != operator_user and not finished:
        return kopf.AdmissionError(
            f"the finalizer {FINALIZER} guarantees compensation; only the operator removes it "
            "(delete the workflow, or set spec.rollback: true)",
            code=403,
        )
    return None


def _finished_label_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> kopf.AdmissionError | None:
    refusal = finished_label_refusal(old, new)
    return kopf.AdmissionError(refusal, code=403) if refusal else None


class Admission:
    """The admission webhooks' handlers, bound to the runtime they serve (its attestation key, its live
    capabilities) and to the operator's own user (the one identity that may remove the saga finalizer
    of a running workflow or write an Approval's status-like fields).

    All are coroutines though most never await: kopf runs a plain function in its thread pool, and the
    hop there and back (two waits for the GIL and for the busy event loop) made every Workflow CREATE wait
    tens of milliseconds per webhook while runners were busy (docs/architecture.md, "Costs")."""

    def __init__(self, runtime: WorkflowRuntime, operator_user: str, bind: Callable[[Mapping[str, Any]], None]) -> None:
        self.runtime = runtime
        self.operator_user = operator_user
        self.bind = bind
        agents = transactions.TransactionAdmission(runtime, operator_user)
        self.transaction_principal = agents.principal
        self.transaction_update = agents.update
        self.transaction_deletion = agents.deletion

    async def workflow_principal(
        self, body: kopf.Body, patch: kopf.Patch, userinfo: Mapping[str, Any], namespace: str | None, **_: Any
    ) -> None:
        user, groups = user_of(userinfo)
        name = body.metadata.name
        if not name:
            # Named here, not by the API server after admission: the attestation must cover the exact
            # name, or it could be copied onto any workflow made from the same generateName.
            prefix = str(body.metadata.get("generateName") or "workflow-")
            name = prefix + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
            patch.setdefault("metadata", {})["name"] = name
        signed = attestation.attest(
            self.runtime.attestation_key, namespace or "", name, user, groups, datetime.now(UTC)
        )
        patch.setdefault("metadata", {}).setdefault("annotations", {}).update(signed)
        if ROLLBACK_BY_ANNOTATION in _annotations(body):
            patch["metadata"]["annotations"][ROLLBACK_BY_ANNOTATION] = None  # only ever set by the UPDATE webhook
        if FINISHED_LABEL in _labels(body):  # a new workflow is watched: only the operator marks it finished
            patch["metadata"].setdefault("labels", {})[FINISHED_LABEL] = None
        transactions.stamp_call(body, patch)
        finalizers = list(body.metadata.get("finalizers") or [])
        if FINALIZER not in finalizers:
            # Added at creation: deleting a running workflow always compensates it first, and the
            # operator spends no write on it.
            patch["metadata"]["finalizers"] = [*finalizers, FINALIZER]

    async def workflow_rollback_actor(
        self, body: kopf.Body, patch: kopf.Patch, userinfo: Mapping[str, Any], **kwargs: Any
    ) -> None:
        """Who asked for the rollback: its compensation is recorded as that person's act. A rollback also
        brings a finished workflow back into the operator's watch (it drops the finished label)."""
        _record_who_set(kwargs.get("old"), body, "rollback", patch, ROLLBACK_BY_ANNOTATION, userinfo)
        asked = (body.get("spec") or {}).get("rollback") and not ((kwargs.get("old") or {}).get("spec") or {}).get(
            "rollback"
        )
        if asked and FINISHED_LABEL in _labels(body):
            patch.setdefault("metadata", {}).setdefault("labels", {})[FINISHED_LABEL] = None

    async def workflow_deletion(self, body: kopf.Body, userinfo: Mapping[str, Any], **kwargs: Any) -> None:
        if kwargs.get("dryrun"):
            return
        user, _groups = user_of(userinfo)
        uid = body.metadata.uid or ""
        if FINISHED_LABEL not in _labels(body):  # a finished one is not watched: nothing would forget it
            self.runtime.deleted_by[uid] = user
        self.runtime.audit.record(
            AuditKind.WORKFLOW_DELETION_REQUESTED,
            namespace=body.metadata.namespace or "",
            workflow=body.metadata.name or "",
            workflow_uid=uid,
            principal=(body.get("status") or {}).get("principal") or _annotations(body).get(PRINCIPAL_ANNOTATION),
            actor=user,
            payload={"phase": (body.get("status") or {}).get("phase")},
        )

    async def workflow_runnable(
        self, spec: kopf.Spec, body: kopf.Body, userinfo: Mapping[str, Any], namespace: str | None, **kwargs: Any
    ) -> None:
        self.bind(kwargs)  # the custom capabilities of the cluster count too
        await self.check_breakers(user_of(userinfo)[0], namespace or "")
        await self.check_runnable(spec)
        if not kwargs.get("dryrun"):  # a call joining a transaction: open, and the caller's own
            await transactions.check_call(self.runtime, namespace or "", body, user_of(userinfo)[0])

    async def check_breakers(self, user: str, namespace: str) -> None:
        """A principal whose denials opened the circuit breaker of a policy that applies here starts nothing
        new until an approver resets it."""
        applying = {b.policy: b.breaker for b in breakers_for(self.runtime.policies(), namespace)}
        if not applying:
            return
        entry = await self.runtime.breakers.open_for(user)
        for policy, since in sorted((entry.get("open") or {}).items()):
            breaker = applying.get(policy)
            if breaker is None:
                continue
            opened = datetime.fromtimestamp(float(since), UTC).isoformat(timespec="seconds")
            raise kopf.AdmissionError(
                f"the circuit breaker of {policy} is open for {user} since {opened}: {breaker.denials} of its "
                f"steps were denied within {breaker.per_seconds} s, so its new workflows are refused. "
                f"Find out why (airun audit show --kind step.decision), then an approver resets it: "
                f"airun policy reset {user}",
                code=403,
            )

    async def check_runnable(self, spec: Mapping[str, Any]) -> None:
        """The checks that span the whole spec: here rather than CEL rules on the CRD, which the API server
        would evaluate again on every status write (see docs/architecture.md)."""
        try:
            parsed = WorkflowSpec.model_validate(dict(spec))
        except ValidationError as error:
            raise kopf.AdmissionError(f"spec: {error}", code=422) from error
        known = await self.runtime.fetch_missing_capabilities(parsed)
        errors = spec_errors(parsed, known) + custom.credential_refusals(parsed, known, custom.CREDENTIALS.known())
        if errors:
            raise kopf.AdmissionError("; ".join(errors), code=422)

    async def workflow_update(
        self, body: kopf.Body, spec: kopf.Spec, userinfo: Mapping[str, Any], **kwargs: Any
    ) -> None:
        """Every update in one webhook call: identities frozen, the finalizer kept, the spec immutable once
        started (except rollback) and runnable while it may still change."""
        self.bind(kwargs)
        old: Mapping[str, Any] = kwargs.get("old") or {}
        user, _groups = user_of(userinfo)
        refusal = (
            identity_change(old, body, "the workflow is created")
            or _transaction_change(old, body)
            or _rollback_actor_change(old, body, user)
            or _finalizer_removal(old, body, user, self.operator_user)
            or _finished_label_change(old, body)
        )
        if refusal is not None:
            raise refusal
        phase = (old.get("status") or {}).get("phase")
        if _without_rollback(old.get("spec")) == _without_rollback(spec):
            return  # metadata or rollback only: never blocked by, say, a capability deleted since
        if (phase or WorkflowPhase.PENDING) != WorkflowPhase.PENDING:
            raise kopf.AdmissionError(
                "spec is immutable once the workflow has started; only spec.rollback may change", code=422
            )
        await self.check_runnable(spec)

    async def approval_decider(
        self, body: kopf.Body, patch: kopf.Patch, userinfo: Mapping[str, Any], **kwargs: Any
    ) -> None:
        """Who decided. On a quorum Approval (approvers.count > 1) a person's decision is a vote: appended to
        spec.votes under their authenticated name, and spec.decision stays empty until the votes decide
        (the first rejection, or COUNT distinct approvals)."""
        old: Mapping[str, Any] = kwargs.get("old") or {}
        old_spec, spec = old.get("spec") or {}, body.get("spec") or {}
        count = quorum(_approvers(old_spec))
        user, _groups = user_of(userinfo)
        if count > 1 and user != self.operator_user and not old_spec.get("decision") and spec.get("decision"):
            vote = {"user": user, "decision": spec["decision"], "at": datetime.now(UTC).isoformat(timespec="seconds")}
            if spec.get("reason"):
                vote["reason"] = spec["reason"]
            votes = [*(old_spec.get("votes") or []), vote]
            patch.setdefault("spec", {})["votes"] = votes
            if not outcome(votes, count):
                patch["spec"]["decision"] = ""
                if spec.get("reason") != old_spec.get("reason"):
                    patch["spec"]["reason"] = old_spec.get("reason")  # the vote keeps it
                return
        _record_who_set(old, body, "decision", patch, DECIDED_BY_ANNOTATION, userinfo)

    async def approval_decision(self, body: kopf.Body, userinfo: Mapping[str, Any], **kwargs: Any) -> None:
        old: Mapping[str, Any] = kwargs.get("old") or {}
        user, groups = user_of(userinfo)
        tampered = approval_tampering(old, body) if user != self.operator_user else None
        if tampered:
            raise kopf.AdmissionError(
                f"{tampered} of an Approval cannot be changed or removed: only spec.decision and spec.reason may",
                code=403,
            )
        # Who may decide is read from the stored object, never from the request: a request that removed
        # or rewrote approvers/requestedBy is refused above, and must not decide its own check either.
        old_spec = old.get("spec") or {}
        spec = body.get("spec") or {}
        before, after = old_spec.get("decision") or "", spec.get("decision") or ""
        old_by, new_by = _annotations(old).get(DECIDED_BY_ANNOTATION), _annotations(body).get(DECIDED_BY_ANNOTATION)
        if before and before != after:
            raise kopf.AdmissionError("the decision of an Approval is final and cannot be changed", code=403)
        approvers = _approvers(old_spec)
        count = quorum(approvers)
        old_votes, new_votes = list(old_spec.get("votes") or []), list(spec.get("votes") or [])
        if old_votes != new_votes and (count == 1 or before or user == self.operator_user):
            raise kopf.AdmissionError(
                "spec.votes are written by the admission webhook from a person's decision on a pending quorum "
                "Approval only",
                code=403,
            )
        if count > 1 and user != self.operator_user:
            refusal = vote_refusal(
                old_votes=old_votes,
                new_votes=new_votes,
                decision=after,
                count=count,
                requested_by=old_spec.get("requestedBy") or "",
                approvers=approvers,
                user=user,
                groups=groups,
            )
            if refusal:
                raise kopf.AdmissionError(refusal, code=403)
        if not before and after:
            refusal = decision_refusal(
                requested_by=old_spec.get("requestedBy") or "", approvers=approvers, user=user, groups=groups
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

    async def policy_conditions(self, spec: kopf.Spec, **_: Any) -> None:
        problems = policy_problems(spec)
        if problems:
            raise kopf.AdmissionError("; ".join(problems), code=422)

    async def breaker_reset(self, body: kopf.Body, userinfo: Mapping[str, Any], **kwargs: Any) -> None:
        """Only the operator records denials; anyone else (the approver role: RBAC) may only remove a
        principal's entry, which closes its breakers, and is recorded in the audit trail as who did it."""
        user, _groups = user_of(userinfo)
        if user == self.operator_user or kwargs.get("dryrun"):
            return
        old: Mapping[str, Any] = kwargs.get("old") or {}
        if _ours((old.get("metadata") or {}).get("labels")) != _ours(body.metadata.get("labels")):
            raise kopf.AdmissionError("the aifirst.dev/ labels of the operator's state cannot be changed", code=403)
        before, after = dict(old.get("data") or {}), dict(body.get("data") or {})
        if any(key not in before or before[key] != value for key, value in after.items()):
            raise kopf.AdmissionError(
                "circuit breakers are recorded by the operator; a person may only reset one "
                "(airun policy reset PRINCIPAL removes its entry)",
                code=403,
            )
        for key in sorted(set(before) - set(after)):
            try:
                entry = json.loads(before[key])
            except ValueError:
                entry = {}
            self.runtime.audit.record(
                AuditKind.BREAKER_RESET,
                namespace="",
                workflow="",
                workflow_uid="",
                principal=str(entry.get("principal") or key),
                actor=user,
                payload={"open": entry.get("open") or {}, "denials": len(entry.get("denials") or [])},
            )

    async def capability_coherent(self, name: str, spec: kopf.Spec, **kwargs: Any) -> None:
        self.bind(kwargs)
        try:
            parsed = custom.parse(name, spec)
        except custom.InvalidCapability as error:
            raise kopf.AdmissionError(str(error), code=422) from error
        problems = custom.problems_with(parsed, self.runtime.builtin)
        if problems:
            raise kopf.AdmissionError(f"capability {name}: " + "; ".join(problems), code=422)
        warnings = kwargs.get("warnings")
        known = {**self.runtime.capabilities, name: parsed}
        ready, _, message = custom.readiness(parsed, known, custom.CREDENTIALS.known())
        if not ready and isinstance(warnings, list):  # accepted: it becomes ready when the other one appears
            warnings.append(f"capability {name} is not ready: {message}")
        if parsed.http and parsed.http.auth and isinstance(warnings, list):
            ref = parsed.http.auth.secret_ref  # read from the operator's namespace, whatever the author meant
            warnings.append(
                f"spec.http.auth: the operator reads key {ref.key!r} of Secret {ref.name!r} in its own "
                f"namespace {custom.CREDENTIALS.namespace!r}"
            )


Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]  # as kopf types them


@dataclass(frozen=True)
class Webhook:
    """One webhook kopf serves: its URL path (ID; see the module's docstring), what it admits, and the
    Admission method that answers."""

    id: str
    mutating: bool
    plural: str
    operations: tuple[Operation, ...]  # in this order in the webhook configuration
    handler: str
    ignore_failures: bool = False
    group: str = API_GROUP
    version: str = API_VERSION
    labels: tuple[tuple[str, str], ...] = ()  # only objects with these labels (objectSelector)


WEBHOOKS = (
    Webhook("workflow-principal", True, "workflows", ("CREATE",), "workflow_principal"),
    Webhook("workflow-rollback-actor", True, "workflows", ("UPDATE",), "workflow_rollback_actor"),
    Webhook("workflow-deletion", False, "workflows", ("DELETE",), "workflow_deletion", ignore_failures=True),
    Webhook("workflow-runnable", False, "workflows", ("CREATE",), "workflow_runnable"),
    Webhook("workflow-update", False, "workflows", ("UPDATE",), "workflow_update"),
    Webhook("approval-decider", True, "approvals", ("UPDATE",), "approval_decider"),
    Webhook("approval-decision", False, "approvals", ("UPDATE",), "approval_decision"),
    Webhook("capability-coherent", False, "capabilities", ("CREATE", "UPDATE"), "capability_coherent"),
    Webhook("policy-conditions", False, "policies", ("CREATE", "UPDATE"), "policy_conditions"),
    Webhook("clusterpolicy-conditions", False, "clusterpolicies", ("CREATE", "UPDATE"), "policy_conditions"),
    Webhook(
        "breaker-reset",
        False,
        "configmaps",
        ("UPDATE",),
        "breaker_reset",
        group="",
        version="v1",
        labels=((policy_state.STATE_LABEL, "breakers"),),
    ),
    Webhook("transaction-principal", True, "transactions", ("CREATE",), "transaction_principal"),
    Webhook("transaction-update", False, "transactions", ("UPDATE",), "transaction_update"),
    Webhook("transaction-deletion", False, "transactions", ("DELETE",), "transaction_deletion"),
)


def register(
    registry: kopf.OperatorRegistry,
    runtime: WorkflowRuntime,
    operator_user: str,
    bind: Callable[[Mapping[str, Any]], None],
) -> None:
    admission = Admission(runtime, operator_user, bind)
    for hook in WEBHOOKS:
        on = kopf.on.mutate if hook.mutating else kopf.on.validate
        on(
            hook.group,
            hook.version,
            hook.plural,
            labels=dict(hook.labels) or None,
            operations=list(hook.operations),
            registry=registry,
            persistent=True,
            ignore_failures=hook.ignore_failures,
            id=hook.id,
        )(getattr(admission, hook.handler))
