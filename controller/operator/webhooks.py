"""The admission webhook configurations: what they contain (kopf's build plus matchConditions), who writes
them (the operator locally, the Helm chart in a cluster), and whether they are registered at all.

kopf's managed mode (settings.admission.managed) writes its own build of the configurations and knows no
matchConditions, so locally the operator writes them itself with `configurations()`, the same builder the
chart test compares the rendered chart against.

matchConditions keep metadata-only updates away from the webhooks: with the operator down (failurePolicy
Fail) an admin can still remove a foreign finalizer or change a label or annotation that is not ours.
What stays guarded: any spec change, our annotations and labels (aifirst.dev/...), an Approval's
ownerReferences, and the removal of our saga finalizer (it guarantees compensation) from a workflow that
has not finished (once it has, anyone may remove it: the operator's own removal costs no webhook call).
The finished label (aifirst.dev/finished) may be added without a webhook call to a finished workflow that
no longer has the saga finalizer and is not being rolled back (the operator does so in that same removal);
any other change of it reaches the webhook.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import kopf
from kopf._cogs.structs.references import Resource
from kopf._core.engines.admission import build_webhooks
from kopf._core.intents.causes import WebhookType
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from controller import API_GROUP, API_VERSION
from controller.api.metadata import FINALIZER, FINISHED_LABEL, PREFIX
from controller.api.workflow import TERMINAL_PHASES, UNWATCHED_PHASES, WorkflowPhase

PLURALS = ("workflows", "approvals", "capabilities", "policies", "clusterpolicies", "transactions")
CHECK_EVERY = 10.0  # seconds between two checks that the configurations are registered
log = logging.getLogger("airun.webhooks")


def _ours_unchanged(field: str, but: str | None = None) -> str:
    """CEL: the aifirst.dev/ keys of metadata.FIELD (BUT excepted) are the same before and after (removal
    included)."""
    new, old = f"object.metadata.{field}", f"oldObject.metadata.{field}"
    not_ours = f"!(k.startsWith('{PREFIX}') && k != '{but}')" if but else f"!k.startsWith('{PREFIX}')"
    return (
        f"(!has({new}) || {new}.all(k, {not_ours}"
        f" || (has({old}) && k in {old} && {old}[k] == {new}[k])))"
        f" && (!has({old}) || {old}.all(k, {not_ours} || (has({new}) && k in {new})))"
    )


def _label(obj: str, key: str) -> str:
    """CEL: the value of label KEY of OBJ, '' when absent."""
    labels = f"{obj}.metadata.labels"
    return f"(has({labels}) && '{key}' in {labels} ? {labels}['{key}'] : '')"


def finished_label_guarded() -> str:
    """CEL: the finished label changes other than its addition to a finished workflow without our finalizer
    and without a rollback still to do (admission.finished_label_refusal is the same rule in Python)."""
    unwatched = ", ".join(f"'{p.value}'" for p in WorkflowPhase if p in UNWATCHED_PHASES)
    addition = (
        f"{_label('object', FINISHED_LABEL)} == 'true'"
        f" && !(has(object.metadata.finalizers) && '{FINALIZER}' in object.metadata.finalizers)"
        f" && has(oldObject.status) && has(oldObject.status.phase) && oldObject.status.phase in [{unwatched}]"
        " && !(has(object.spec.rollback) && object.spec.rollback"
        f" && oldObject.status.phase == '{WorkflowPhase.SUCCEEDED.value}')"
    )
    return f"{_label('object', FINISHED_LABEL)} != {_label('oldObject', FINISHED_LABEL)} && !({addition})"


def guarded_update(plural: str) -> str:
    """CEL, true when the request must reach the webhook: anything but an UPDATE, or an UPDATE that touches
    what the webhooks guard."""
    if plural == "configmaps":  # the operator's state (circuit breakers): its data and our labels
        data = "!has(object.data) || !has(oldObject.data) || object.data != oldObject.data"
        parts = ["request.operation != 'UPDATE'", data, f"!({_ours_unchanged('labels')})"]
        return " || ".join(f"({p})" for p in parts)
    workflows = plural == "workflows"
    parts = [
        "request.operation != 'UPDATE'",
        "!has(object.spec) || !has(oldObject.spec) || object.spec != oldObject.spec",
        f"!({_ours_unchanged('annotations')})",
        f"!({_ours_unchanged('labels', FINISHED_LABEL if workflows else None)})",
    ]
    if workflows:
        parts.append(finished_label_guarded())
    removed = (
        f"has(oldObject.metadata.finalizers) && '{FINALIZER}' in oldObject.metadata.finalizers"
        f" && !(has(object.metadata.finalizers) && '{FINALIZER}' in object.metadata.finalizers)"
    )
    if plural == "workflows":
        # Anyone may remove it once the workflow has finished (admission's _finalizer_removal): so the
        # operator's own removal, the last write of every workflow, costs no call of either UPDATE webhook.
        finished = ", ".join(f"'{p.value}'" for p in WorkflowPhase if p in TERMINAL_PHASES)
        removed += (
            f" && !(has(oldObject.status) && has(oldObject.status.phase) && oldObject.status.phase in [{finished}])"
        )
    parts.append(f"({removed})")
    if plural == "approvals":
        parts.append(
            "has(object.metadata.ownerReferences) != has(oldObject.metadata.ownerReferences)"
            " || (has(object.metadata.ownerReferences)"
            " && object.metadata.ownerReferences != oldObject.metadata.ownerReferences)"
        )
    return " || ".join(f"({p})" for p in parts)


def match_conditions(plural: str, operations: Iterable[str]) -> list[dict[str, str]]:
    if "UPDATE" not in operations:
        return []
    return [{"name": "not-metadata-only", "expression": guarded_update(plural)}]


def configurations(
    registry: kopf.OperatorRegistry, name: str, client_config: Mapping[str, Any]
) -> dict[WebhookType, list[dict[str, Any]]]:
    """The webhooks of both configurations, as kopf builds them for REGISTRY's handlers, plus matchConditions."""
    handlers = registry._webhooks.get_all_handlers()
    resources = [Resource(API_GROUP, API_VERSION, plural) for plural in PLURALS] + [Resource("", "v1", "configmaps")]
    result: dict[WebhookType, list[dict[str, Any]]] = {}
    for kind in (WebhookType.MUTATING, WebhookType.VALIDATING):
        webhooks = build_webhooks(
            [h for h in handlers if h.reason == kind],
            resources=resources,
            name_suffix=name,
            client_config=client_config,  # type: ignore[arg-type]
        )
        for webhook in webhooks:
            if webhook["objectSelector"] is None:  # kopf sends null: no selector
                del webhook["objectSelector"]
            plurals = {r for rule in webhook["rules"] for r in rule["resources"]}
            operations = {o for rule in webhook["rules"] for o in rule["operations"]}
            conditions = match_conditions(next(iter(plurals)), operations) if len(plurals) == 1 else []
            if conditions:
                webhook["matchConditions"] = conditions
        result[kind] = webhooks
    return result


def expected_names(registry: kopf.OperatorRegistry, name: str) -> dict[WebhookType, set[str]]:
    built = configurations(registry, name, {"url": "https://unused"})
    return {kind: {w["name"] for w in webhooks} for kind, webhooks in built.items()}


class _Api:
    """The two configuration kinds behind one interface."""

    def __init__(self, api: client.AdmissionregistrationV1Api, kind: WebhookType) -> None:
        mutating = kind == WebhookType.MUTATING
        # Any: the generated client wants its model classes; a plain dict serialises the same.
        self.read: Any
        self.create: Any
        self.replace: Any
        self.kind = "MutatingWebhookConfiguration" if mutating else "ValidatingWebhookConfiguration"
        self.read = api.read_mutating_webhook_configuration if mutating else api.read_validating_webhook_configuration
        self.create = (
            api.create_mutating_webhook_configuration if mutating else api.create_validating_webhook_configuration
        )
        self.replace = (
            api.replace_mutating_webhook_configuration if mutating else api.replace_validating_webhook_configuration
        )


async def write(api_client: Any, registry: kopf.OperatorRegistry, name: str, client_config: Mapping[str, Any]) -> None:
    """Creates or replaces both configurations (locally: the operator owns them)."""
    api = client.AdmissionregistrationV1Api(api_client)
    for kind, webhooks in configurations(registry, name, client_config).items():
        ops = _Api(api, kind)
        body: dict[str, Any] = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": ops.kind,
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "airun"}},
            "webhooks": webhooks,
        }
        try:
            existing = await ops.read(name)
            body["metadata"]["resourceVersion"] = existing.metadata.resource_version
            await ops.replace(name, body)
        except ApiException as error:
            if error.status != 404:
                raise
            await ops.create(body)
        log.info("registered the %s %s", ops.kind, name)


class RegisteringServer:
    """A kopf webhook server that also writes the configurations each time it has a client config (the URL
    and CA the API server must use); kopf's own manager stays off (settings.admission.managed None)."""

    def __init__(self, server: kopf.WebhookServer, register: Callable[[Mapping[str, Any]], Awaitable[None]]) -> None:
        self.server = server
        self.register = register

    async def __call__(self, fn: Any) -> Any:
        async for client_config in self.server(fn):
            await self.register(client_config)
            yield client_config


async def registered(api_client: Any, name: str, expected: Mapping[WebhookType, set[str]]) -> bool:
    """Whether both configurations exist and hold every webhook the operator serves (a GET each)."""
    api = client.AdmissionregistrationV1Api(api_client)
    for kind, names in expected.items():
        try:
            configuration = await _Api(api, kind).read(name)
            present = {w.name for w in configuration.webhooks or []}
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        if not names <= present:
            return False
    return True


async def watch(
    api_client: Any,
    name: str,
    expected: Mapping[WebhookType, set[str]],
    report: Callable[[bool], Awaitable[None]],
    every: float = CHECK_EVERY,
) -> None:
    """Reports, at start-up and every EVERY seconds, whether the configurations are registered."""
    while True:
        try:
            found = await registered(api_client, name, expected)
        except (ApiException, OSError, TimeoutError) as error:
            log.warning("cannot read the webhook configurations %s: %s", name, error)
            found = False
        await report(found)
        await asyncio.sleep(every)
