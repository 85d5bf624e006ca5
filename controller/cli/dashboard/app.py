"""The Textual app of `airun dashboard`: workflows live from the API server (list, then watch, reconnecting
after errors), the selected workflow's details, and the decisions a person takes: approve, reject, roll back.

It acts only as the kubeconfig identity it was started with; the API server and the admission webhook decide
what that identity may do, and their refusals are shown as notifications."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import aiohttp
import click
from kubernetes_asyncio import client as aclient
from kubernetes_asyncio import config as aconfig
from kubernetes_asyncio import watch
from kubernetes_asyncio.client.exceptions import ApiException
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Header, Input, Static

from controller import API_GROUP, API_VERSION
from controller.api.approval import ApprovalPhase
from controller.api.workflow import WorkflowPhase
from controller.cli.dashboard import render
from controller.cli.workflows import Kube, decide, reason_of, request_rollback

WATCH_SECONDS = 240  # the API server ends each watch after this; the next one resumes from the last version
MAX_BACKOFF = 30.0
RECENT_EVENTS = 8
COLUMNS = {
    "namespace": "NAMESPACE",  # with -A only
    "name": "NAME",
    "phase": "PHASE",
    "progress": "PROGRESS",
    "principal": "PRINCIPAL",
    "age": "AGE",
}

KEYS = (
    ("↑ ↓", "select a workflow"),
    ("a", "approve the selected workflow's pending Approval (asks for an optional reason)"),
    ("r", "reject it (asks for an optional reason): the workflow fails and is compensated"),
    (
        "R",
        "roll back the selected workflow (the panic button; asks for confirmation); on a transaction's row, "
        "all its calls, newest first",
    ),
    ("m", "recent messages (notifications disappear after a few seconds)"),
    ("?", "this help"),
    ("q", "quit"),
)


def _message_of(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return reason_of(error)  # the async client's ApiException has the same shape
    if isinstance(error, click.ClickException):
        return error.message
    return str(error) or type(error).__name__


class ReasonPrompt(ModalScreen[str | None]):
    """Asks why (optional); Enter decides, Escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question)
            yield Input(placeholder="reason (optional); Enter to send, Escape to cancel", id="reason")

    @on(Input.Submitted)
    def send(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class Confirm(ModalScreen[bool]):
    """A yes/no question; only an explicit yes (y, or the button) answers yes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, yes: str) -> None:
        super().__init__()
        self.question, self.yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question)
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class TextScreen(ModalScreen[None]):
    """Help and messages: text that any key of the bindings closes."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark,m", "close", "Close")]

    def __init__(self, title: str, body: Table | Text) -> None:
        super().__init__()
        self.title_text, self.body = title, body

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog wide"):
            yield Static(Text(self.title_text, style="bold"))
            yield Static(self.body)
            yield Static(Text("Escape closes", style="dim"))

    def action_close(self) -> None:
        self.dismiss(None)


class Dashboard(App[None]):
    """Workflows of NAMESPACE (None: of every namespace the identity may list), as KUBE's identity."""

    TITLE = "airun dashboard"
    CSS = """
    #workflows { height: auto; max-height: 50%; }
    #empty { height: 1fr; content-align: center middle; color: $text-muted; }
    #details { height: 1fr; border-top: solid $primary; padding: 0 1; }
    ModalScreen { align: center middle; }
    .dialog { width: 72; height: auto; max-height: 80%; border: thick $primary; background: $surface; padding: 1 2; }
    .dialog.wide { width: 100; }
    .dialog Input { margin-top: 1; }
    .buttons { height: auto; margin-top: 1; align-horizontal: right; }
    .buttons Button { margin-left: 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "approve", "Approve"),
        Binding("r", "reject", "Reject"),
        Binding("R", "rollback", "Rollback", key_display="R"),
        Binding("m", "messages", "Messages"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, kube: Kube, *, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        super().__init__()
        self.kube, self.kubeconfig, self.context, self.namespace = kube, kubeconfig, context, namespace
        self.workflows: dict[str, dict[str, Any]] = {}  # by "namespace/name", as the watch last saw them
        self.approvals: dict[str, dict[str, Any]] = {}  # by "namespace/name"
        self.transactions: dict[str, dict[str, Any]] = {}  # by "namespace/name"; rows keyed tx:namespace/name
        self.events: dict[str, list[render.EventLine]] = {}
        self.selected: str | None = None
        self.listed = False  # the first list of workflows arrived
        self.problem: str | None = None  # why the workflows cannot be listed right now
        self.messages: deque[tuple[datetime.datetime, SeverityLevel, str]] = deque(maxlen=50)
        self.api: aclient.ApiClient | None = None
        self.where = f"namespace {namespace}" if namespace else "any namespace"
        self.columns = [c for c in COLUMNS if c != "namespace" or not namespace]

    # -- layout -------------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        table: DataTable[Any] = DataTable(id="workflows", cursor_type="row", zebra_stripes=True)
        for key in self.columns:
            table.add_column(COLUMNS[key], key=key)
        yield table
        yield Static(id="empty")
        with VerticalScroll(id="details"):
            yield Static(id="details-body")
        yield Footer()

    async def on_mount(self) -> None:
        self.sub_title = f"{self.context or 'current context'} · {self.where}"
        self._show_empty_state()
        configuration = aclient.Configuration()
        try:
            await aconfig.load_kube_config(
                config_file=self.kubeconfig, context=self.context, client_configuration=configuration
            )
        except Exception as error:  # the CLI read the same kubeconfig; its async twin may still refuse it
            self.exit(return_code=1, message=f"no usable kubeconfig: {error}")
            return
        self.api = aclient.ApiClient(configuration)
        self.run_worker(self._identify(), group="identity")
        self.run_worker(self._follow("workflows", self._apply_workflow, self._replace_workflows), group="watch")
        self.run_worker(self._follow("approvals", self._apply_approval, self._replace_approvals), group="watch")
        self.run_worker(
            self._follow("transactions", self._apply_transaction, self._replace_transactions), group="watch"
        )
        self.set_interval(5, self._refresh_ages)

    async def on_unmount(self) -> None:
        self.workers.cancel_all()
        if self.api is not None:
            await self.api.close()

    # -- the API server -----------------------------------------------------------------------------------

    async def _identify(self) -> None:
        """Who the API server says we are (shown in the header), so nobody wonders whose approval this is."""
        assert self.api is not None
        try:
            review = await aclient.AuthenticationV1Api(self.api).create_self_subject_review(
                aclient.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
            )
        except Exception:  # an older API server: the context's name is all there is to show
            return
        self.sub_title = f"{review.status.user_info.username} · {self.where}"

    def _lister(self, plural: str) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        assert self.api is not None
        custom = aclient.CustomObjectsApi(self.api)
        if self.namespace:
            return custom.list_namespaced_custom_object, (API_GROUP, API_VERSION, self.namespace, plural)
        return custom.list_cluster_custom_object, (API_GROUP, API_VERSION, plural)

    async def _follow(
        self,
        plural: str,
        apply: Callable[[str, dict[str, Any]], None],
        replace: Callable[[list[dict[str, Any]]], None],
    ) -> None:
        """List PLURAL, then watch it from the list's resourceVersion. A watch the API server ends normally
        is resumed where it ended; after an error (410 Gone, a lost connection, a refusal) the whole list
        is read again, after a backoff, so that nothing missed in between stays stale."""
        function, args = self._lister(plural)
        backoff = 1.0
        lost = False
        while True:
            try:
                listing = await function(*args)
                replace(listing.get("items") or [])
                version = listing["metadata"]["resourceVersion"]
                if lost:
                    self._report(f"{plural}: connected again", "information")
                lost, backoff = False, 1.0
                while True:
                    stream = watch.Watch()
                    async with stream.stream(
                        function,
                        *args,
                        resource_version=version,
                        timeout_seconds=WATCH_SECONDS,
                        allow_watch_bookmarks=True,
                        _request_timeout=WATCH_SECONDS + 30,
                    ) as events:
                        async for event in events:
                            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                                apply(event["type"], event["raw_object"])
                    version = stream.resource_version or version
            except asyncio.CancelledError:
                raise
            except ApiException as error:
                if error.status == 410:  # the version is too old to resume from: list again, at once
                    continue
                message = f"cannot read {plural} in {self.where}: {_message_of(error)}"
                if plural == "workflows":
                    self.problem = message
                    self._show_empty_state()
                if not lost:
                    self._report(message, "error")
                lost = True
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                if not lost:
                    self._report(f"lost the API server ({_message_of(error)}); reconnecting", "warning")
                lost = True
            except Exception as error:  # never let a surprise end the dashboard: say it, and start over
                self._report(f"{plural}: {type(error).__name__}: {error}", "error")
                lost = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    @work(group="events", exclusive=True)  # a newer reload cancels an older one still under way
    async def _follow_events(self, key: str) -> None:
        """The latest Events about the workflow KEY (one list call; shown under its details)."""
        assert self.api is not None
        namespace, name = key.split("/", 1)
        # By uid too: Events of an earlier workflow of the same name are not about this one.
        uid = (self.workflows.get(key) or {}).get("metadata", {}).get("uid")
        selector = f"involvedObject.name={name},involvedObject.kind=Workflow" + (
            f",involvedObject.uid={uid}" if uid else ""
        )
        try:
            listing = await aclient.CoreV1Api(self.api).list_namespaced_event(namespace, field_selector=selector)
        except Exception:  # events are a courtesy: without them the details are still right
            return
        lines = [
            render.EventLine(
                e.last_timestamp or e.event_time or e.metadata.creation_timestamp,
                e.type or "",
                e.reason or "",
                e.message or "",
            )
            for e in listing.items
        ]
        lines.sort(key=lambda e: e.when or datetime.datetime.min.replace(tzinfo=datetime.UTC))
        self.events[key] = lines[-RECENT_EVENTS:]
        if key == self.selected:
            # The listing may end while the app shuts down and its widgets are gone (seen on a loaded machine:
            # NoMatches failed the app at exit).
            with contextlib.suppress(NoMatches):
                self._show_details()

    # -- what the watches saw -----------------------------------------------------------------------------

    @staticmethod
    def _key(obj: dict[str, Any]) -> str:
        return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"

    @property
    def table(self) -> DataTable[Any]:
        return self.query_one("#workflows", DataTable)

    def _replace_workflows(self, items: list[dict[str, Any]]) -> None:
        self.listed, self.problem = True, None
        fresh = {self._key(obj): obj for obj in items}
        for key in [k for k in self.workflows if k not in fresh]:
            self._apply_workflow("DELETED", self.workflows[key])
        for key in sorted(fresh):
            self._apply_workflow("MODIFIED", fresh[key])
        self._show_empty_state()

    def _apply_workflow(self, kind: str, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        if kind == "DELETED":
            if self.workflows.pop(key, None) is not None:
                self.events.pop(key, None)
        else:
            self.workflows[key] = obj
        self._changed(key, follow_events=True)
        transaction = render.transaction_of(obj)
        if transaction and render.TRANSACTION_PREFIX + transaction == self.selected:
            self._show_details()  # the selected transaction's calls

    def _changed(self, key: str, *, follow_events: bool = False) -> None:
        """The rows after a change of the object of row KEY."""
        self._sync_rows()
        self._show_empty_state()
        table = self.table
        if self.selected is None and table.row_count:
            self._select(str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value))
        elif key == self.selected:
            if key not in table.rows:
                self.selected = None
                self._select_cursor_row()
            else:
                self._show_details()
                if follow_events:
                    self._follow_events(key)

    def _rows(self) -> list[tuple[str, dict[str, Any]]]:
        """Every row in order: the workflows that are no transaction's call, then each transaction followed by
        its calls (in call order)."""
        now = datetime.datetime.now(datetime.UTC)
        calls: dict[str, list[str]] = {}
        for key, obj in self.workflows.items():
            owner = render.transaction_of(obj)
            if owner is not None and owner in self.transactions:
                calls.setdefault(owner, []).append(key)
        grouped = {k for keys in calls.values() for k in keys}
        rows = [(k, render.row(obj, now)) for k, obj in self.workflows.items() if k not in grouped]
        for key, tx in self.transactions.items():
            mine = sorted(calls.get(key, []), key=lambda k: render.call_order(self.workflows[k]))
            rows.append((render.TRANSACTION_PREFIX + key, render.transaction_row(tx, len(mine), now)))
            rows += [(k, render.call_row(self.workflows[k], now)) for k in mine]
        return rows

    def _sync_rows(self) -> None:
        table = self.table
        rows = self._rows()
        keys = [k for k, _ in rows]
        if keys == [str(k.value) for k in table.rows]:
            for key, cells in rows:
                for column in ("name", "phase", "progress", "principal", "age"):
                    table.update_cell(key, column, cells[column])
            return
        table.clear()
        for key, cells in rows:
            table.add_row(*(cells[c] for c in self.columns), key=key)
        if self.selected in keys:
            table.move_cursor(row=keys.index(self.selected))

    def _replace_transactions(self, items: list[dict[str, Any]]) -> None:
        self.transactions = {self._key(obj): obj for obj in items}
        self._changed(self.selected or "")

    def _apply_transaction(self, kind: str, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        if kind == "DELETED":
            self.transactions.pop(key, None)
        else:
            self.transactions[key] = obj
        self._changed(render.TRANSACTION_PREFIX + key)

    def _replace_approvals(self, items: list[dict[str, Any]]) -> None:
        self.approvals = {self._key(obj): obj for obj in items}
        self._show_details()

    def _apply_approval(self, kind: str, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        if kind == "DELETED":
            self.approvals.pop(key, None)
        else:
            self.approvals[key] = obj
        owner = f"{obj['metadata']['namespace']}/{obj.get('spec', {}).get('workflow')}"
        if owner == self.selected:
            self._show_details()

    # -- showing it ---------------------------------------------------------------------------------------

    def _show_empty_state(self) -> None:
        empty = self.query_one("#empty", Static)
        nothing = not self.workflows and not self.transactions
        self.table.display = not nothing
        self.query_one("#details").display = not nothing
        empty.display = nothing
        if self.problem:
            empty.update(Text(self.problem, style="red"))
        elif not self.listed:
            empty.update(f"connecting to the API server ({self.where}) …")
        else:
            empty.update(f"no workflows in {self.where}\n\ncreate one with `airun run FILE`; it shows up here")

    def _namespaced(self, key: str) -> dict[str, dict[str, Any]]:
        namespace = key.split("/", 1)[0]
        return {k.split("/", 1)[1]: v for k, v in self.approvals.items() if k.startswith(namespace + "/")}

    def _show_details(self) -> None:
        body = self.query_one("#details-body", Static)
        transaction = self._selected_transaction_key()
        if transaction is not None:
            calls = sorted(
                (w for w in self.workflows.values() if render.transaction_of(w) == transaction), key=render.call_order
            )
            body.update(render.transaction_details(self.transactions[transaction], calls))
            return
        obj = self.workflows.get(self.selected or "")
        if obj is None:
            body.update("")
            return
        assert self.selected is not None
        body.update(render.details(obj, self._namespaced(self.selected), self.events.get(self.selected)))

    def _selected_transaction_key(self) -> str | None:
        key = (self.selected or "").removeprefix(render.TRANSACTION_PREFIX)
        if self.selected and self.selected.startswith(render.TRANSACTION_PREFIX) and key in self.transactions:
            return key
        return None

    def _select(self, key: str) -> None:
        self.selected = key
        self._show_details()
        if not key.startswith(render.TRANSACTION_PREFIX):
            self._follow_events(key)

    def _select_cursor_row(self) -> None:
        table = self.table
        if table.row_count:
            row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
            self._select(str(row_key.value))
        else:
            self._show_details()

    @on(DataTable.RowHighlighted)
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value and event.row_key.value != self.selected:
            self._select(str(event.row_key.value))

    def _refresh_ages(self) -> None:
        self._sync_rows()

    def _report(self, message: str, severity: SeverityLevel = "information") -> None:
        """A notification, also kept for the messages screen (m)."""
        self.messages.append((datetime.datetime.now(), severity, message))
        self.notify(message, severity=severity, markup=False, timeout=8 if severity == "error" else 4)

    # -- actions ------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The dashboard's keys act on the table only, not under a dialog."""
        if action in {"approve", "reject", "rollback", "messages", "help", "quit"}:
            return not isinstance(self.screen, ModalScreen)
        return True

    def _selected_workflow(self) -> dict[str, Any] | None:
        obj = self.workflows.get(self.selected or "")
        if obj is None:
            transaction = self._selected_transaction_key()
            self._report(
                f"transaction {transaction}: select one of its calls" if transaction else "no workflow selected",
                "warning",
            )
        return obj

    def _pending(self) -> tuple[dict[str, Any], str, str] | None:
        obj = self._selected_workflow()
        if obj is None:
            return None
        pending = render.pending_approvals(obj)
        if not pending:
            self._report(f"{self._key(obj)} waits for no approval (it is {render.phase_of(obj)})", "warning")
            return None
        step, approval = pending[0]
        return obj, step, approval

    def _decide(self, decision: ApprovalPhase, question: str) -> None:
        found = self._pending()
        if found is None:
            return
        obj, step, approval = found
        namespace = obj["metadata"]["namespace"]
        detail = self.approvals.get(f"{namespace}/{approval}", {}).get("spec", {})
        asked = detail.get("message") or (
            f"{detail['capability']} ({detail.get('riskLevel', '?')} risk)" if detail.get("capability") else ""
        )

        def send(reason: str | None) -> None:
            if reason is None:
                return
            call = partial(decide, self.kube, approval, decision, reason or None, namespace)
            self._in_thread(call, f"approval {approval}: {decision}")

        text = f"{question} {namespace}/{approval} (step {step} of {obj['metadata']['name']})?"
        if asked:
            text += f"\n\n{asked}"
        self.push_screen(ReasonPrompt(text), send)

    def action_approve(self) -> None:
        self._decide(ApprovalPhase.APPROVED, "Approve")

    def action_reject(self) -> None:
        self._decide(ApprovalPhase.REJECTED, "Reject (the workflow fails and is compensated)")

    def _rollback_transaction(self, key: str) -> None:
        obj = self.transactions[key]
        phase = render.transaction_phase(obj)
        if phase in render.TRANSACTION_OVER or (obj.get("spec") or {}).get("rollback"):
            self._report(f"transaction {key} is {phase}: nothing to roll back", "warning")
            return
        calls = [w for w in self.workflows.values() if render.transaction_of(w) == key]
        question = (
            f"Roll back transaction {key}?\n\nIts {len(calls)} call(s) are undone, newest first, each through its "
            "governed compensation; calls still running are stopped."
        )
        namespace, name = key.split("/", 1)

        def answered(yes: bool | None) -> None:
            if yes:
                patch = {"spec": {"rollback": True}}
                call = partial(self.kube.patch, "transactions", name, patch, namespace)
                self._in_thread(call, f"transaction {key}: rollback requested")

        self.push_screen(Confirm(question, "Roll back"), answered)

    def action_rollback(self) -> None:
        transaction = self._selected_transaction_key()
        if transaction is not None:
            self._rollback_transaction(transaction)
            return
        obj = self._selected_workflow()
        if obj is None:
            return
        key, phase = self._key(obj), render.phase_of(obj)
        if phase in render.ROLLED_BACK_OR_FAILED:
            self._report(f"{key} is {phase}: nothing to roll back", "warning")
            return
        if obj.get("spec", {}).get("rollback"):
            self._report(f"{key}: rollback already requested", "warning")
            return
        done, _ = render.progress_of(obj)
        if phase == WorkflowPhase.SUCCEEDED:
            question = f"Roll back {key}?\n\nIts {done} completed step(s) are compensated (undone), last first."
        else:
            question = f"Stop {key} ({phase}) and compensate its {done} completed step(s)?"
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]

        def answered(yes: bool | None) -> None:
            if yes:
                self._in_thread(
                    partial(request_rollback, self.kube, name, namespace), f"workflow {key}: rollback requested"
                )

        self.push_screen(Confirm(question, "Roll back"), answered)

    def _in_thread(self, call: Callable[[], Any], done: str) -> None:
        """CALL (a blocking PATCH with the CLI's own code) in a worker thread; its outcome as a notification."""

        def run() -> None:
            try:
                call()
            except Exception as error:
                self.call_from_thread(self._report, _message_of(error), "error")
            else:
                self.call_from_thread(self._report, done, "information")

        self.run_worker(run, thread=True, group="actions")

    def action_help(self) -> None:
        keys = Table(box=None, show_header=False)
        keys.add_column(style="bold cyan")
        keys.add_column()
        for key, what in KEYS:
            keys.add_row(key, what)
        self.push_screen(TextScreen(f"airun dashboard: workflows in {self.where}, live", keys))

    def action_messages(self) -> None:
        text = Text()
        for when, severity, message in self.messages:
            style = {"error": "red", "warning": "yellow"}.get(severity, "")
            text.append(f"{when:%H:%M:%S} ", style="dim").append(message + "\n", style=style)
        self.push_screen(TextScreen("Recent messages", text if self.messages else Text("none yet", style="dim")))
