"""`airun dashboard` driven headless by Textual's pilot, against the real API server and the real operator,
as the local identities (bob authors, alice approves, admin is refused its own approval by the webhook)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import Static

from controller.api.workflow import WorkflowPhase
from controller.cli.dashboard.app import Confirm, Dashboard, ReasonPrompt
from controller.cli.workflows import Kube as CliKube
from controller.localcluster import processes
from controller.localcluster.devenv import DevEnvironment
from tests.kube import Kube

REPO = Path(__file__).resolve().parents[2]
SIZE = (140, 44)


def dashboard(env: DevEnvironment, context: str, namespace: str | None) -> Dashboard:
    """The app exactly as `airun dashboard --context CONTEXT -n NAMESPACE` builds it."""
    kubeconfig = str(env.kubeconfig)
    kube = CliKube(kubeconfig, context, namespace)
    return Dashboard(kube, kubeconfig=kubeconfig, context=context, namespace=namespace)


def drive(app: Dashboard, scenario: Callable[[Pilot[None]], Awaitable[None]]) -> None:
    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await scenario(pilot)

    asyncio.run(main())


async def until(pilot: Pilot[None], predicate: Callable[[], bool], what: str, within: float = 45) -> None:
    """Wait (yielding to the app) until PREDICATE holds; fail naming WHAT and showing the app's state."""
    app = pilot.app
    assert isinstance(app, Dashboard)
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {what} after {within} s; rows {rows(app)}; messages {list(app.messages)}")
        await pilot.pause(0.05)


def rows(app: Dashboard) -> dict[str, dict[str, str]]:
    table = app.table
    return {str(key.value): {str(c.value): str(table.get_cell(key, c)) for c in table.columns} for key in table.rows}


def cell(app: Dashboard, key: str, column: str) -> str:
    return rows(app).get(key, {}).get(column, "")


def details(app: Dashboard) -> str:
    console = Console(width=SIZE[0], record=True, file=io.StringIO())
    console.print(app.query_one("#details-body", Static).content)
    return console.export_text()


def said(app: Dashboard, text: str, severity: str | None = None) -> bool:
    return any(text in message and severity in (None, level) for _, level, message in app.messages)


async def apply(kube: Kube, file: str, namespace: str, as_: str) -> None:
    await asyncio.to_thread(kube.apply, (REPO / "examples" / file).read_text(), namespace=namespace, as_=as_)


def test_workflows_appear_and_change_live(env: DevEnvironment, kube: Kube, namespace: str) -> None:
    app = dashboard(env, "bob", namespace)
    key = f"{namespace}/approval-gate"

    async def scenario(pilot: Pilot[None]) -> None:
        empty = app.query_one("#empty", Static)
        await until(pilot, lambda: f"no workflows in namespace {namespace}" in str(empty.content), "empty state")
        assert not app.table.display
        await apply(kube, "approval.yaml", namespace, "bob")
        await until(pilot, lambda: key in rows(app), "row")
        assert app.table.display and not empty.display
        await until(pilot, lambda: cell(app, key, "phase") == WorkflowPhase.AWAITING_APPROVAL, "AwaitingApproval")
        assert cell(app, key, "progress").endswith(" 1/3") and cell(app, key, "principal") == "bob"
        assert app.selected == key
        await until(pilot, lambda: "approval-gate.review Pending" in details(app), "the pending approval shown")
        text = details(app)
        for line in ("draft", "review", "publish", "io.fs.write_file", "(requested by bob)", "ALLOW"):
            assert line in text, text
        assert "Succeeded" in text and "AwaitingApproval" in text

        # bob may not decide approvals: the API server's refusal is a notification, and the app goes on
        await pilot.press("a")
        assert isinstance(app.screen, ReasonPrompt)
        await pilot.press("enter")
        await until(pilot, lambda: said(app, 'User "bob" cannot patch resource "approvals"', "error"), "Forbidden")

        await asyncio.to_thread(
            kube.run,
            *("patch", "approval", "approval-gate.review", "-n", namespace, "--type=merge"),
            *("-p", json.dumps({"spec": {"decision": "Approved"}})),
            as_="alice",
        )
        await until(pilot, lambda: cell(app, key, "phase") == WorkflowPhase.SUCCEEDED, "Succeeded")
        assert cell(app, key, "progress").endswith(" 3/3")
        await until(pilot, lambda: "Approved by alice" in details(app), "the decision in the details")
        await until(pilot, lambda: "Completed=True" in details(app), "the Completed condition")

        await asyncio.to_thread(kube.run, "delete", "wf", "approval-gate", "-n", namespace)
        await until(pilot, lambda: key not in rows(app), "the row gone")
        assert empty.display

    drive(app, scenario)


def test_an_approver_approves_from_the_dashboard(env: DevEnvironment, kube: Kube, namespace: str) -> None:
    app = dashboard(env, "alice", namespace)
    key = f"{namespace}/approval-gate"

    async def scenario(pilot: Pilot[None]) -> None:
        await apply(kube, "approval.yaml", namespace, "bob")
        await until(pilot, lambda: cell(app, key, "phase") == WorkflowPhase.AWAITING_APPROVAL, "AwaitingApproval")
        await until(pilot, lambda: f"{namespace}/approval-gate.review" in app.approvals, "the approval")
        await pilot.press("a")
        assert isinstance(app.screen, ReasonPrompt)
        await pilot.press(*"reviewed", "enter")
        await until(pilot, lambda: said(app, "approval approval-gate.review: Approved"), "the confirmation")
        await until(pilot, lambda: cell(app, key, "phase") == WorkflowPhase.SUCCEEDED, "Succeeded")
        await until(pilot, lambda: "Approved by alice: reviewed" in details(app), "the decision in the details")

    drive(app, scenario)
    approval = kube.get("approval", "approval-gate.review", namespace)
    assert approval["spec"] == {**approval["spec"], "decision": "Approved", "reason": "reviewed"}
    assert approval["status"]["decidedBy"] == "alice"


def test_a_rejection_compensates(env: DevEnvironment, kube: Kube, namespace: str) -> None:
    app = dashboard(env, "alice", namespace)
    key = f"{namespace}/approval-gate"

    async def scenario(pilot: Pilot[None]) -> None:
        await apply(kube, "approval.yaml", namespace, "bob")
        await until(pilot, lambda: cell(app, key, "phase") == WorkflowPhase.AWAITING_APPROVAL, "AwaitingApproval")
        await pilot.press("r")
        await pilot.press("escape")  # cancelled: nothing is sent
        assert not isinstance(app.screen, ReasonPrompt)
        assert kube.get("approval", "approval-gate.review", namespace)["spec"]["decision"] == ""
        await pilot.press("r", *"not now", "enter")
        await until(pilot, lambda: cell(app, key, "phase") == WorkflowPhase.COMPENSATED, "Compensated")
        await until(pilot, lambda: "ApprovalRejected" in details(app), "the reason")

    drive(app, scenario)
    assert kube.get("approval", "approval-gate.review", namespace)["spec"]["reason"] == "not now"


def test_the_webhook_refuses_a_self_approval_and_the_app_goes_on(
    env: DevEnvironment, kube: Kube, namespace: str
) -> None:
    app = dashboard(env, "admin", namespace)
    key = f"{namespace}/approval-gate"

    async def scenario(pilot: Pilot[None]) -> None:
        await apply(kube, "approval.yaml", namespace, "admin")
        await until(pilot, lambda: cell(app, key, "phase") == WorkflowPhase.AWAITING_APPROVAL, "AwaitingApproval")
        await pilot.press("a", "enter")
        refusal = "admin requested this approval and cannot decide it"
        await until(pilot, lambda: said(app, refusal, "error"), "the webhook's refusal")
        await pilot.press("m")  # the messages screen keeps it after the toast is gone
        assert "Recent messages" in str(app.screen.query(Static).first().content)
        await pilot.press("escape")
        assert app.is_running and cell(app, key, "phase") == WorkflowPhase.AWAITING_APPROVAL

    drive(app, scenario)
    assert kube.get("approval", "approval-gate.review", namespace)["spec"]["decision"] == ""


def test_rollback_asks_first_then_compensates(env: DevEnvironment, kube: Kube, namespace: str) -> None:
    app = dashboard(env, "bob", namespace)
    key = f"{namespace}/hello"
    greeting = env.workspaces / namespace / "greetings" / "hello.txt"

    async def scenario(pilot: Pilot[None]) -> None:
        await apply(kube, "hello.yaml", namespace, "bob")
        await until(pilot, lambda: cell(app, key, "phase") == WorkflowPhase.SUCCEEDED, "Succeeded")
        assert greeting.exists()
        await pilot.press("R")
        assert isinstance(app.screen, Confirm)
        await pilot.press("n")  # no: nothing is sent
        assert not isinstance(app.screen, Confirm)
        assert "rollback" not in kube.get("wf", "hello", namespace)["spec"]
        await pilot.press("R", "y")
        await until(pilot, lambda: said(app, f"workflow {key}: rollback requested"), "the confirmation")
        await until(pilot, lambda: cell(app, key, "phase") == WorkflowPhase.COMPENSATED, "Compensated")
        assert "RollbackRequested" in details(app) and "rollback requested" in details(app)
        await pilot.press("R")  # a second time: nothing left to roll back, and no dialog
        assert not isinstance(app.screen, Confirm) and said(app, "nothing to roll back", "warning")

    drive(app, scenario)
    assert not greeting.exists()


def test_all_namespaces_shows_the_namespace_column(env: DevEnvironment, kube: Kube, namespace: str) -> None:
    app = dashboard(env, "alice", None)
    key = f"{namespace}/hello"

    async def scenario(pilot: Pilot[None]) -> None:
        await apply(kube, "hello.yaml", namespace, "bob")
        await until(pilot, lambda: cell(app, key, "phase") == WorkflowPhase.SUCCEEDED, "Succeeded")
        assert cell(app, key, "namespace") == namespace
        await pilot.press("question_mark")
        assert "roll back the selected workflow" in _text_of_screen(app)
        await pilot.press("escape")

    drive(app, scenario)


def test_a_refused_list_is_said_in_the_empty_state(env: DevEnvironment) -> None:
    app = dashboard(env, "agent", None)  # the agent may list workflows in namespace agents only

    async def scenario(pilot: Pilot[None]) -> None:
        empty = app.query_one("#empty", Static)
        refusal = 'cannot list resource "workflows" in API group "aifirst.dev" at the cluster scope'
        await until(pilot, lambda: refusal in str(empty.content), "the refusal")
        assert said(app, refusal, "error") and app.is_running
        assert app.sub_title.startswith("system:serviceaccount:agents:planner")  # who the API server says we are

    drive(app, scenario)


def _text_of_screen(app: Dashboard) -> str:
    console = Console(width=SIZE[0], record=True, file=io.StringIO())
    for static in app.screen.query(Static):
        console.print(static.content)
    return console.export_text()


def test_the_watch_reconnects_after_the_api_server_restarts(env: DevEnvironment, kube: Kube, namespace: str) -> None:
    app = dashboard(env, "bob", namespace)
    hello = (REPO / "examples" / "hello.yaml").read_text()

    async def scenario(pilot: Pilot[None]) -> None:
        await asyncio.to_thread(kube.apply, hello, namespace=namespace, as_="bob")
        await until(pilot, lambda: cell(app, f"{namespace}/hello", "phase") == WorkflowPhase.SUCCEEDED, "Succeeded")
        await asyncio.to_thread(processes.stop, env.cluster.run / "kube-apiserver.pid", "kube-apiserver")
        await until(pilot, lambda: said(app, "lost the API server", "warning"), "the lost connection")
        # From this thread, not a worker thread: the API server dies with the thread that started it
        # (die_with_parent is PR_SET_PDEATHSIG), and later tests of the session need it.
        env.cluster.start()
        await until(pilot, lambda: said(app, "workflows: connected again"), "the reconnection", within=90)
        again = hello.replace("name: hello", "name: hello-again")
        await asyncio.to_thread(kube.apply, again, namespace=namespace, as_="bob")
        await until(
            pilot, lambda: cell(app, f"{namespace}/hello-again", "phase") == WorkflowPhase.SUCCEEDED, "the new one", 90
        )
        assert app.is_running and cell(app, f"{namespace}/hello", "phase") == WorkflowPhase.SUCCEEDED

    drive(app, scenario)


def test_a_transaction_is_one_row_with_its_calls_beneath_and_R_rolls_it_back(
    env: DevEnvironment, kube: Kube, namespace: str
) -> None:
    from tests.integration.test_governance import policy

    kube.apply(policy("tx-open"), namespace=namespace)
    app = dashboard(env, "bob", namespace)
    transaction = {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": "Transaction",
        "metadata": {"name": "refactor"},
        "spec": {"description": "rename the module", "ttlSeconds": 600},
    }

    def call(name: str, path: str) -> dict[str, Any]:
        step = {"name": "w", "capability": "io.fs.write_file", "inputs": {"path": path, "content": name}}
        return {
            "apiVersion": "aifirst.dev/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": name, "labels": {"aifirst.dev/transaction": "refactor"}},
            "spec": {"steps": [step]},
        }

    tx_key, first, second = f"tx:{namespace}/refactor", f"{namespace}/first", f"{namespace}/second"
    workspace = env.workspaces / namespace

    async def scenario(pilot: Pilot[None]) -> None:
        await asyncio.to_thread(kube.apply, transaction, namespace=namespace, as_="bob")
        for name, path in (("first", "one.py"), ("second", "two.py")):
            await asyncio.to_thread(kube.apply, call(name, path), namespace=namespace, as_="bob")
            await until(pilot, lambda n=name: cell(app, f"{namespace}/{n}", "phase") == "Succeeded", f"{name} done")
        await until(pilot, lambda: cell(app, tx_key, "progress") == "2 calls", "the transaction's row")
        assert list(rows(app)) == [tx_key, first, second]  # one row, its calls beneath, in call order
        assert cell(app, first, "name") == "└ first" and "refactor" in cell(app, tx_key, "name")
        assert cell(app, tx_key, "phase") == "Open" and cell(app, tx_key, "principal") == "bob"
        app.table.move_cursor(row=0)
        await until(pilot, lambda: app.selected == tx_key, "the transaction selected")
        assert "transaction" in details(app) and "rename the module" in details(app)
        await pilot.press("a")  # approvals belong to calls, not to the transaction
        assert said(app, "select one of its calls", "warning")
        await pilot.press("R")
        assert isinstance(app.screen, Confirm)
        await pilot.press("y")
        await until(pilot, lambda: said(app, f"transaction {namespace}/refactor: rollback requested"), "the request")
        await until(pilot, lambda: cell(app, tx_key, "phase") == "RolledBack", "RolledBack")
        await until(pilot, lambda: cell(app, first, "phase") == "Compensated", "first compensated")
        assert "undone, in this order: second, first" in details(app)
        assert cell(app, tx_key, "progress") == "2 calls, 2 undone"

    drive(app, scenario)
    assert not (workspace / "one.py").exists() and not (workspace / "two.py").exists()
