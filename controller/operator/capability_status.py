"""The Ready condition of Capability objects (status.conditions), for GitOps order.

Argo CD and Flux apply a directory in their own order, so a Capability may arrive before the capability that
compensates it, or before the Secret its endpoint authenticates with. It is accepted, and stays `Ready=False`
(reason CompensationUnknown, or SecretMissing) until that one exists; workflows that use it are refused at
admission until then (controller.engine.validation.spec_errors, custom.credential_refusals). Every event of a
Capability re-evaluates it and the Capabilities that name it, and every change of a Secret of the operator's
namespace (controller/operator/credentials.py) the Capabilities that name that Secret, so it turns ready as
soon as the other one is applied, and not ready again when that one is deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from controller import API_GROUP, API_VERSION
from controller.api.capability import CapabilitySpec
from controller.capabilities import custom
from controller.engine.state import iso
from controller.operator.runtime import WorkflowRuntime

log = logging.getLogger("airun.capabilities")
# One evaluation and write at a time: a Capability event and a Secret event interleaving at their awaits
# could otherwise write a condition computed from what was known before the other one.
_writing = asyncio.Lock()


def condition(spec: CapabilitySpec, known: Mapping[str, object], generation: int | None) -> dict[str, Any]:
    ready, reason, message = custom.readiness(spec, known, custom.CREDENTIALS.known())
    return {
        "type": custom.READY,
        "status": "True" if ready else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def _same(stored: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    keys = ("status", "reason", "message", "observedGeneration")  # the message: which Secret, which key
    return stored is not None and all(stored.get(k) == wanted[k] for k in keys)


def _ready_condition(body: Mapping[str, Any]) -> dict[str, Any] | None:
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == custom.READY:
            return dict(c)
    return None


async def _write(runtime: WorkflowRuntime, name: str, wanted: dict[str, Any], stored: Mapping[str, Any] | None) -> None:
    now = iso(datetime.now(UTC))
    transition = stored.get("lastTransitionTime") if stored and stored.get("status") == wanted["status"] else None
    patch = {"status": {"conditions": [{**wanted, "lastTransitionTime": transition or now}]}}
    try:
        await runtime.connection.custom.patch_cluster_custom_object_status(
            API_GROUP,
            API_VERSION,
            "capabilities",
            name,
            patch,
            _content_type="application/merge-patch+json",  # type: ignore[call-arg]  # not in its stubs
        )
    except ApiException as error:
        if error.status != 404:  # deleted meanwhile: nothing to tell
            raise
    runtime.capability_conditions[name] = wanted


async def refresh(runtime: WorkflowRuntime, name: str, body: Mapping[str, Any], deleted: bool) -> None:
    """After an event of Capability NAME: its own condition, and that of every Capability naming it."""
    async with _writing:
        await _refresh(runtime, name, body, deleted)


async def _refresh(runtime: WorkflowRuntime, name: str, body: Mapping[str, Any], deleted: bool) -> None:
    known = runtime.capabilities
    if deleted:
        runtime.fetched.pop(name, None)
        runtime.capability_conditions.pop(name, None)
        known = {n: c for n, c in known.items() if n != name}
    else:
        try:
            spec = custom.parse(name, body.get("spec") or {})
        except custom.InvalidCapability:
            spec = None  # refused at admission; an older object is skipped by the index too
        if spec is not None:
            wanted = condition(spec, known, (body.get("metadata") or {}).get("generation"))
            stored = _ready_condition(body)
            if not _same(stored, wanted):
                await _write(runtime, name, wanted, stored)
            else:
                runtime.capability_conditions[name] = stored or wanted
    await _reevaluate(
        runtime,
        known,
        lambda other, spec: other != name and spec.compensation is not None and spec.compensation.capability == name,
    )


async def secret_changed(runtime: WorkflowRuntime, secret: str) -> None:
    """After Secret SECRET of the operator's namespace appeared, changed or went: the condition of every
    Capability whose endpoint (or whose compensation's endpoint) authenticates with it."""

    async with _writing:
        known = runtime.capabilities

        def names_it(_: str, spec: CapabilitySpec) -> bool:  # itself, or the capability that undoes it
            undo = known.get(spec.compensation.capability or "") if spec.compensation else None
            return secret in (custom.authenticates_with(spec), undo and custom.authenticates_with(undo))

        await _reevaluate(runtime, known, names_it)


async def _reevaluate(
    runtime: WorkflowRuntime, known: Mapping[str, object], names_it: Callable[[str, CapabilitySpec], bool]
) -> None:
    for other, spec in runtime.indexes.custom_capabilities().items():
        previous = runtime.capability_conditions.get(other)
        if not names_it(other, spec) or previous is None:  # not seen yet: its own event will come
            continue
        wanted = condition(spec, known, previous.get("observedGeneration"))
        if not _same(previous, wanted):
            log.info("capability %s: Ready=%s (%s)", other, wanted["status"], wanted["reason"])
            await _write(runtime, other, wanted, previous)
