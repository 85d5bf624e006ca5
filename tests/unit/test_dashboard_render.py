"""What the dashboard renders of a workflow (no terminal, no cluster), and its command line."""

from __future__ import annotations

import datetime
import io
from typing import Any

from click.testing import CliRunner
from rich.console import Console

from controller.cli.dashboard import render
from controller.cli.main import main

NOW = datetime.datetime(2026, 1, 2, 12, 0, 0, tzinfo=datetime.UTC)


def workflow(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "w", "namespace": "ns", "uid": "u1", "creationTimestamp": "2026-01-02T11:57:30Z"},
        "spec": {
            "steps": [
                {"name": "draft", "capability": "io.fs.write_file"},
                {"name": "review", "type": "Approval"},
                {"name": "publish", "capability": "io.fs.write_file"},
            ]
        },
        "status": status,
    }


def text(renderable: Any) -> str:
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_progress_is_the_operators_count_or_else_counted() -> None:
    assert render.progress_of(workflow(progress="2/3")) == (2, 3)
    assert render.progress_of(workflow(steps=[{"name": "draft", "phase": "Succeeded"}])) == (1, 3)
    assert render.progress_of(workflow()) == (0, 3)
    assert render.progress_bar(1, 4, "Running", width=8).plain == "██░░░░░░ 1/4"
    assert render.progress_bar(0, 0, "Pending", width=4).plain == "░░░░ 0/0"


def test_age_reads_like_kubectl() -> None:
    assert render.age("2026-01-02T11:59:18Z", NOW) == "42s"
    assert render.age("2026-01-02T11:57:30Z", NOW) == "2m"
    assert render.age("2025-12-30T12:00:00Z", NOW) == "3d"
    assert render.age(None, NOW) == ""


def test_row_cells() -> None:
    cells = render.row(workflow(phase="AwaitingApproval", progress="1/3", principal="bob"), NOW)
    assert {k: str(v) for k, v in cells.items() if k != "progress"} == {
        "namespace": "ns",
        "name": "w",
        "phase": "AwaitingApproval",
        "principal": "bob",
        "age": "2m",
    }
    assert str(cells["progress"]).endswith(" 1/3")


def test_details_show_steps_approvals_compensation_conditions_and_events() -> None:
    obj = workflow(
        phase="AwaitingApproval",
        principal="bob",
        steps=[
            {
                "name": "draft",
                "phase": "Succeeded",
                "decision": "ALLOW",
                "policy": "ClusterPolicy baseline rule 0: ALLOW",  # not repeated below the table
                "compensation": {"capability": "io.fs.restore", "phase": "Pending"},
            },
            {"name": "review", "phase": "AwaitingApproval", "approval": "w-review"},
            {"name": "publish", "decision": "DENY", "policy": "Policy ns/p rule 1: DENY", "error": "denied"},
        ],
        conditions=[{"type": "Completed", "status": "False", "reason": "AwaitingApproval"}],
    )
    approval = {
        "metadata": {"name": "w-review", "ownerReferences": [{"uid": "u1"}]},
        "spec": {"requestedBy": "bob", "approvers": {"groups": ["approvers"]}},
    }
    event = render.EventLine(NOW, "Normal", "Started", "3 steps")
    shown = text(render.details(obj, {"w-review": approval}, [event]))
    for expected in (
        "ns/w AwaitingApproval",
        "principal: bob",
        "io.fs.write_file",
        "(approval)",
        "w-review Pending (requested by bob; approvers: groups approvers)",
        "io.fs.restore",
        "publish: Policy ns/p rule 1: DENY",
        "publish: denied",
        "Completed=False AwaitingApproval",
        "12:00:00 Started",
    ):
        assert expected in shown, shown
    assert "baseline" not in shown
    assert render.pending_approvals(obj) == [("review", "w-review")]


def test_a_quorum_approval_shows_its_tally() -> None:
    spec = {
        "requestedBy": "bob",
        "approvers": {"groups": ["sre"], "count": 2},
        "votes": [{"user": "carol", "decision": "Approved", "at": "2026-01-02T11:59:00Z"}],
    }
    shown = text(render.approval_state("w-review", {"spec": spec, "status": {"phase": "Pending"}}))
    assert "w-review Pending 1 of 2 approvals (carol)" in shown, shown
    single = text(render.approval_state("w-review", {"spec": {"requestedBy": "bob"}, "status": {"phase": "Pending"}}))
    assert "of" not in single.replace("w-review", "")


def test_an_approval_of_an_earlier_workflow_of_the_same_name_is_not_this_ones() -> None:
    stale = {"metadata": {"name": "w-review", "ownerReferences": [{"uid": "older"}]}, "status": {"phase": "Approved"}}
    assert render.approval_of(workflow(), {"w-review": stale}, "w-review") is None
    fresh = {"metadata": {"name": "w-review", "ownerReferences": [{"uid": "u1"}]}}
    assert render.approval_of(workflow(), {"w-review": fresh}, "w-review") is fresh


def test_the_command_line() -> None:
    runner = CliRunner()
    shown = runner.invoke(main, ["dashboard", "--help"])
    assert shown.exit_code == 0 and "--all-namespaces" in shown.output and "--context" in shown.output
    both = runner.invoke(main, ["dashboard", "-n", "x", "-A"])
    assert both.exit_code == 2 and "give -n NAMESPACE or -A, not both" in both.output


def test_a_transaction_row_counts_its_calls_and_its_details_list_them_in_call_order() -> None:
    tx = {
        "metadata": {"name": "tx-1", "namespace": "ns", "creationTimestamp": "2026-01-02T11:59:00Z"},
        "spec": {"description": "rename", "ttlSeconds": 60},
        "status": {
            "phase": "RolledBack",
            "reason": "Expired",
            "principal": "bob",
            "calls": [{"workflow": "a", "capability": "io.fs.write_file", "phase": "Undone", "undo": "io.fs.restore"}],
            "undone": ["a"],
        },
    }

    def call(name: str, joined: str) -> dict[str, Any]:
        labels = {"aifirst.dev/transaction": "tx-1"}
        annotations = {"aifirst.dev/transaction-joined-at": joined}
        meta = {"name": name, "namespace": "ns", "labels": labels, "annotations": annotations}
        return {"metadata": meta, "spec": {"steps": [{"name": "w", "capability": "io.fs.write_file"}]}}

    late, early = call("b", "2026-01-02T11:59:02.000002Z"), call("a", "2026-01-02T11:59:02.000001Z")
    assert render.transaction_of(late) == "ns/tx-1" and render.transaction_of(workflow()) is None
    assert sorted([late, early], key=render.call_order) == [early, late]
    cells = render.transaction_row(tx, 2, NOW)
    assert text(cells["progress"]).strip() == "2 calls, 1 undone" and "rename" in text(cells["name"])
    assert text(render.call_row(early, NOW)["name"]).strip() == "└ a"
    shown = text(render.transaction_details(tx, [early, late]))
    assert "transaction ns/tx-1 RolledBack (Expired)" in shown and "principal: bob" in shown
    assert shown.index(" a ") < shown.index(" b ") and "io.fs.restore" in shown
    assert "undone, in this order: a" in shown
