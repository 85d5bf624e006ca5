"""PURE: the transactions of agents that act one call at a time (DESIGN section 6).

A transaction is a Transaction object plus the one-step Workflows labelled with its name (its calls). This
module decides, from plain data (the transaction, its calls as the API server holds them, the time), what the
operator does next: open it, close it, notice its TTL passed, and roll it back by asking for the rollback of
ONE call at a time, newest completion first, each through the saga's own governed compensation (the
workflow's spec.rollback). Everything it needs is in the API objects, so a restarted operator carries on
where the last one stopped: nothing lives only in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.api.transaction import (
    JOINED_ANNOTATION,
    MAX_CALLS,
    Call,
    CallPhase,
    TransactionPhase,
    TransactionReason,
    TransactionSpec,
    TransactionStatus,
)
from controller.api.workflow import WorkflowPhase
from controller.engine.state import iso, parse_time

POLL = timedelta(seconds=0.5)  # how soon to look again while a call is being undone
_UNFINISHED = frozenset(
    {None, WorkflowPhase.PENDING, WorkflowPhase.RUNNING, WorkflowPhase.AWAITING_APPROVAL, WorkflowPhase.COMPENSATING}
)


@dataclass(frozen=True)
class CallView:
    """One workflow labelled with the transaction, as the API server holds it."""

    name: str
    principal: str  # the principal the operator recorded (or the webhook attested); "" when none verifies
    phase: WorkflowPhase | None
    created_at: datetime
    finished_at: datetime | None = None
    rollback: bool = False  # spec.rollback is set
    deleting: bool = False
    capability: str | None = None
    undo: str | None = None  # the capability of its step's compensation, once known
    has_undo: bool = True  # whether anything of it can be compensated (False: a call that only read)


@dataclass(frozen=True)
class TransactionWorld:
    name: str
    spec: TransactionSpec
    status: TransactionStatus
    created_at: datetime
    principal: str  # attested by the admission webhook; "" when nothing verifies
    calls: Sequence[CallView]
    now: datetime


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class TransactionPlan:
    status: TransactionStatus
    rollback: list[str] = field(default_factory=list)  # workflows whose spec.rollback to set now
    events: list[Event] = field(default_factory=list)
    wake_at: datetime | None = None
    finished: bool = False  # nothing more happens until the spec changes
    ignored: list[str] = field(default_factory=list)  # labelled workflows of another principal


def _joined(meta: Mapping[str, Any]) -> datetime:
    """When a call was made: the admission webhook's stamp (microseconds), else its creationTimestamp (seconds)."""
    for value in (((meta.get("annotations") or {}).get(JOINED_ANNOTATION)), meta.get("creationTimestamp")):
        try:
            found = parse_time(str(value)) if value else None
        except ValueError:
            found = None
        if found is not None:
            return found
    return datetime.min.replace(tzinfo=UTC)


def _completed(status: Mapping[str, Any]) -> datetime | None:
    """When the call completed: its last step's end (an undo, which ends the workflow again, keeps that),
    else the workflow's end."""
    ends = [parse_time(s.get("finishedAt")) for s in status.get("steps") or [] if isinstance(s, Mapping)]
    known = [e for e in ends if e is not None]
    return max(known) if known else parse_time(status.get("finishedAt"))


def view_of(obj: Mapping[str, Any], principal: str) -> CallView:
    """A Workflow object (as the API server returns it) as a call. PRINCIPAL: whom the operator knows it
    to run as (its status.principal, or the webhook's verified attestation before the first status write)."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    steps = [s for s in (obj.get("spec") or {}).get("steps") or [] if isinstance(s, Mapping)]
    done = [s for s in status.get("steps") or [] if isinstance(s, Mapping)]
    compensated = [s for s in done if (s.get("compensation") or {}).get("capability")]
    undos = [str(s["compensation"]["capability"]) for s in compensated]
    try:
        phase = WorkflowPhase(status["phase"]) if status.get("phase") else None
    except ValueError:
        phase = None
    return CallView(
        name=str(meta.get("name") or ""),
        principal=principal,
        phase=phase,
        created_at=_joined(meta),
        finished_at=_completed(status),
        rollback=bool((obj.get("spec") or {}).get("rollback")),
        deleting=bool(meta.get("deletionTimestamp")),
        capability=", ".join(str(s.get("capability")) for s in steps if s.get("capability")) or None,
        undo=", ".join(undos) or None,
        has_undo=any(s.get("phase") == "Succeeded" for s in compensated),
    )


def call_phase(call: CallView) -> CallPhase:
    """What became of CALL, as the transaction sees it."""
    phase = call.phase
    if call.rollback:
        if phase is WorkflowPhase.COMPENSATED:
            return CallPhase.UNDONE
        if phase is WorkflowPhase.COMPENSATION_FAILED:
            return CallPhase.UNDO_FAILED
        if phase is WorkflowPhase.FAILED:
            return CallPhase.UNDONE  # stopped before it completed anything: nothing was left to undo
        return CallPhase.UNDOING
    if phase is WorkflowPhase.SUCCEEDED:
        return CallPhase.SUCCEEDED
    if phase in (WorkflowPhase.FAILED, WorkflowPhase.COMPENSATED, WorkflowPhase.COMPENSATION_FAILED):
        return CallPhase.FAILED
    return CallPhase.RUNNING


def in_call_order(calls: Iterable[CallView]) -> list[CallView]:
    return sorted(calls, key=lambda c: (c.created_at, c.name))


def newest_completion_first(calls: Iterable[CallView]) -> list[CallView]:
    """The order in which finished calls are undone: the reverse of the order they completed in (the
    operator's finishedAt, in milliseconds; an agent's next call starts only after the last one ended)."""
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(calls, key=lambda c: (c.finished_at or epoch, c.created_at, c.name), reverse=True)


def undoable(call: CallView) -> bool:
    """A call whose undo can be asked for now: it succeeded, nobody asked for its rollback, and it did
    something that can be compensated."""
    return call.phase is WorkflowPhase.SUCCEEDED and not call.rollback and not call.deleting and call.has_undo


def _calls(world: TransactionWorld, own: Sequence[CallView]) -> list[Call]:
    return [
        Call(
            workflow=c.name,
            capability=c.capability,
            phase=call_phase(c),
            finished_at=iso(c.finished_at) if c.finished_at else None,
            undo=c.undo,
        )
        for c in in_call_order(own)[:MAX_CALLS]
    ]


def plan(world: TransactionWorld) -> TransactionPlan:
    status = world.status.model_copy(deep=True)
    result = TransactionPlan(status)
    if status.phase is None:
        if not world.principal:
            status.phase, status.reason = TransactionPhase.FAILED, TransactionReason.UNATTESTED
            status.message = "no principal attested by the admission webhook: the transaction cannot be opened"
            status.finished_at = iso(world.now)
            result.events.append(Event("Warning", status.reason.value, status.message))
            result.finished = True
            return result
        status.phase, status.reason = TransactionPhase.OPEN, TransactionReason.OPENED
        status.principal = world.principal
        status.expires_at = iso(world.created_at + timedelta(seconds=world.spec.ttl_seconds))
        status.message = f"open until {status.expires_at}"
    principal = status.principal or world.principal
    # Defence in depth: whatever the labels say, only the calls of the transaction's own principal are its calls
    # (the webhook refuses the others at creation; without it they are still never rolled back by it).
    own = [c for c in world.calls if c.principal == principal]
    result.ignored = sorted(c.name for c in world.calls if c.principal != principal)
    status.calls = _calls(world, own)
    status.call_count = len(own)

    if status.phase is TransactionPhase.OPEN:
        expires = parse_time(status.expires_at)
        if world.spec.rollback:
            _start_rollback(status, result, TransactionReason.ROLLBACK_REQUESTED, "rollback requested")
            status.rollback_requested_by = principal
        elif world.spec.commit:
            status.phase, status.reason = TransactionPhase.COMMITTED, TransactionReason.COMMITTED
            status.message = f"committed with {len(own)} calls"
            status.finished_at = iso(world.now)
            result.events.append(Event("Normal", "Committed", status.message))
            result.finished = True
            return result
        elif expires is not None and world.now >= expires:
            _start_rollback(
                status, result, TransactionReason.EXPIRED, f"left open past its TTL ({world.spec.ttl_seconds} s)"
            )
        else:
            result.wake_at = expires
            return result

    if status.phase is TransactionPhase.COMMITTED:
        if not world.spec.rollback:
            result.finished = True
            return result
        _start_rollback(status, result, TransactionReason.ROLLBACK_REQUESTED, "rollback of the committed transaction")
        status.rollback_requested_by = principal
        status.finished_at = None

    if status.phase is TransactionPhase.ROLLING_BACK:
        _roll_back(world, status, result, own)
        return result

    result.finished = True
    return result


def _start_rollback(
    status: TransactionStatus, result: TransactionPlan, reason: TransactionReason, message: str
) -> None:
    status.phase, status.reason, status.message = TransactionPhase.ROLLING_BACK, reason, message
    result.events.append(Event("Warning" if reason is TransactionReason.EXPIRED else "Normal", reason.value, message))


def _roll_back(
    world: TransactionWorld, status: TransactionStatus, result: TransactionPlan, own: Sequence[CallView]
) -> None:
    for call in own:  # the order in which calls were undone, as they are seen undone
        if call_phase(call) is CallPhase.UNDONE and call.name not in status.undone:
            status.undone.append(call.name)
    # Calls still under way are stopped first (spec.rollback fails a running workflow and compensates what it
    # completed); the finished ones are then undone one at a time, newest completion first.
    unfinished = [c for c in own if c.phase in _UNFINISHED or (c.rollback and call_phase(c) is CallPhase.UNDOING)]
    stop = [
        c.name
        for c in in_call_order(unfinished)
        if not c.rollback and not c.deleting and c.phase is not WorkflowPhase.COMPENSATING  # already undoing itself
    ]
    if unfinished:
        result.rollback.extend(stop)
        result.wake_at = world.now + POLL
        return
    pending = [c for c in newest_completion_first(own) if undoable(c)]
    if pending:
        result.rollback.append(pending[0].name)
        result.wake_at = world.now + POLL
        return
    failed = [c.name for c in own if call_phase(c) is CallPhase.UNDO_FAILED]
    status.finished_at = iso(world.now)
    if failed:
        status.phase, status.reason = TransactionPhase.ROLLBACK_FAILED, TransactionReason.COMPENSATION_FAILED
        status.message = f"the compensation of {', '.join(failed)} failed: a person must look (airun status NAME)"
        result.events.append(Event("Warning", "RollbackFailed", status.message))
    else:
        status.phase = TransactionPhase.ROLLED_BACK  # the reason stays why: RollbackRequested or Expired
        status.message = f"rolled back: {len(status.undone)} calls undone, newest first" + (
            f" ({', '.join(status.undone)})" if status.undone else ""
        )
        result.events.append(Event("Normal", "RolledBack", status.message))
    result.finished = True
