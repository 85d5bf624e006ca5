"""The pure core of agents' transactions (controller/engine/transaction.py): what the operator does next."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controller.api.transaction import (
    CallPhase,
    TransactionPhase,
    TransactionReason,
    TransactionSpec,
    TransactionStatus,
)
from controller.api.workflow import WorkflowPhase
from controller.engine.transaction import CallView, TransactionWorld, newest_completion_first, plan

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def call(name: str, minute: int, phase: WorkflowPhase | None = WorkflowPhase.SUCCEEDED, **kw: object) -> CallView:
    finished = T0 + timedelta(minutes=minute, seconds=30) if phase in (WorkflowPhase.SUCCEEDED,) else None
    defaults: dict[str, object] = {
        "principal": "alice",
        "phase": phase,
        "created_at": T0 + timedelta(minutes=minute),
        "finished_at": finished,
        "undo": "io.fs.restore",
    }
    defaults.update(kw)
    return CallView(name=name, **defaults)  # type: ignore[arg-type]


def world(*calls: CallView, status: TransactionStatus | None = None, now: datetime | None = None, **spec: object):
    return TransactionWorld(
        name="tx-1",
        spec=TransactionSpec.model_validate({"ttlSeconds": 600, **spec}),
        status=status or TransactionStatus(),
        created_at=T0,
        principal="alice",
        calls=list(calls),
        now=now or T0 + timedelta(minutes=5),
    )


def opened() -> TransactionStatus:
    return plan(world()).status


def test_a_new_transaction_opens_for_its_attested_principal_until_its_ttl() -> None:
    result = plan(world())
    assert result.status.phase is TransactionPhase.OPEN and result.status.principal == "alice"
    assert result.status.expires_at == "2026-12-01T12:10:00.000Z"
    assert result.wake_at == T0 + timedelta(minutes=10) and not result.finished
    unattested = plan(TransactionWorld("tx", TransactionSpec(), TransactionStatus(), T0, "", [], T0))
    assert (
        unattested.status.phase is TransactionPhase.FAILED and unattested.status.reason is TransactionReason.UNATTESTED
    )


def test_calls_are_listed_in_call_order_and_another_principals_are_never_its_calls() -> None:
    result = plan(world(call("b", 2), call("a", 1), call("mallory", 3, principal="bob"), status=opened()))
    assert [c.workflow for c in result.status.calls] == ["a", "b"]
    assert result.ignored == ["mallory"]


def test_commit_closes_it_and_rollback_after_commit_is_still_possible() -> None:
    committed = plan(world(call("a", 1), status=opened(), commit=True))
    assert committed.status.phase is TransactionPhase.COMMITTED and committed.finished
    later = plan(world(call("a", 1), status=committed.status, commit=True, rollback=True))
    assert later.status.phase is TransactionPhase.ROLLING_BACK and later.rollback == ["a"]


def test_past_its_ttl_an_open_transaction_is_rolled_back_by_the_operator() -> None:
    result = plan(world(call("a", 1), status=opened(), now=T0 + timedelta(minutes=11)))
    assert result.status.phase is TransactionPhase.ROLLING_BACK and result.status.reason is TransactionReason.EXPIRED
    assert result.rollback == ["a"] and result.status.rollback_requested_by is None


def test_rollback_undoes_one_call_at_a_time_newest_completion_first() -> None:
    calls = [call("a", 1), call("b", 2), call("failed", 3, WorkflowPhase.COMPENSATED), call("read", 4, has_undo=False)]
    status = opened()
    first = plan(world(*calls, status=status, rollback=True))
    assert first.rollback == ["b"] and first.status.rollback_requested_by == "alice"
    undoing = [calls[0], call("b", 2, WorkflowPhase.COMPENSATING, rollback=True), *calls[2:]]
    waiting = plan(world(*undoing, status=first.status, rollback=True))
    assert waiting.rollback == [] and not waiting.finished  # the next one waits for the first to be undone
    b_done = call("b", 2, WorkflowPhase.COMPENSATED, rollback=True)
    second = plan(world(calls[0], b_done, *calls[2:], status=waiting.status, rollback=True))
    assert second.rollback == ["a"] and second.status.undone == ["b"]
    a_done = call("a", 1, WorkflowPhase.COMPENSATED, rollback=True)
    done = plan(world(a_done, b_done, *calls[2:], status=second.status, rollback=True))
    assert done.finished and done.status.phase is TransactionPhase.ROLLED_BACK
    assert done.status.undone == ["b", "a"]
    phases = {c.workflow: c.phase for c in done.status.calls}
    assert phases == {
        "a": CallPhase.UNDONE,
        "b": CallPhase.UNDONE,
        "failed": CallPhase.FAILED,
        "read": CallPhase.SUCCEEDED,
    }


def test_calls_still_running_are_stopped_before_the_finished_ones_are_undone() -> None:
    calls = [
        call("a", 1),
        call("gated", 2, WorkflowPhase.AWAITING_APPROVAL),
        call("own-failure", 3, WorkflowPhase.COMPENSATING),
    ]
    result = plan(world(*calls, status=opened(), rollback=True))
    assert result.rollback == ["gated"]  # not the one compensating itself already, and not "a" yet


def test_a_failed_compensation_ends_it_rollback_failed() -> None:
    broken = call("a", 1, WorkflowPhase.COMPENSATION_FAILED, rollback=True)
    rolling = plan(world(call("a", 1), status=opened(), rollback=True)).status
    result = plan(world(broken, status=rolling, rollback=True))
    assert result.status.phase is TransactionPhase.ROLLBACK_FAILED and "a" in (result.status.message or "")


def test_ties_in_completion_time_fall_back_to_call_order() -> None:
    same = T0 + timedelta(minutes=9)
    ordered = newest_completion_first([call("x", 1, finished_at=same), call("y", 2, finished_at=same), call("z", 0)])
    assert [c.name for c in ordered] == ["y", "x", "z"]
