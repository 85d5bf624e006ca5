"""What the dashboard shows of a workflow, as Rich renderables: plain functions of the objects the API
server returned, so that they are testable without a terminal or a cluster."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from controller.api.approval import ApprovalPhase
from controller.api.transaction import JOINED_ANNOTATION, TRANSACTION_LABEL, CallPhase, TransactionPhase
from controller.api.workflow import Decision, EventType, StepPhase, WorkflowPhase
from controller.cli.progress import PHASE_STYLE
from controller.client.workflows import step_label
from controller.policy.approvers import quorum_text

BAR_WIDTH = 12
# Phases after which a workflow has nothing left to roll back.
ROLLED_BACK_OR_FAILED = frozenset(
    {WorkflowPhase.FAILED, WorkflowPhase.COMPENSATING, WorkflowPhase.COMPENSATED, WorkflowPhase.COMPENSATION_FAILED}
)
APPROVAL_STYLE = {ApprovalPhase.APPROVED: "green", ApprovalPhase.REJECTED: "red", ApprovalPhase.EXPIRED: "red"}


@dataclass(frozen=True)
class EventLine:
    """One Kubernetes Event about a workflow, as shown in its details."""

    when: datetime.datetime | None
    type: str
    reason: str
    message: str


def phase_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase") or WorkflowPhase.PENDING)


def styled(phase: str | None) -> Text:
    phase = phase or StepPhase.PENDING
    return Text(phase, style=PHASE_STYLE.get(phase, "white"))


def progress_of(obj: Mapping[str, Any]) -> tuple[int, int]:
    """Steps succeeded and steps in all: status.progress ("2/4") as the operator wrote it, else counted."""
    status = obj.get("status") or {}
    done, _, total = str(status.get("progress") or "").partition("/")
    if done.isdigit() and total.isdigit():
        return int(done), int(total)
    steps = (obj.get("spec") or {}).get("steps") or []
    succeeded = sum(1 for s in status.get("steps") or [] if s.get("phase") == StepPhase.SUCCEEDED)
    return succeeded, len(steps)


def progress_bar(done: int, total: int, phase: str, width: int = BAR_WIDTH) -> Text:
    filled = round(width * done / total) if total else 0
    bar = Text("█" * filled, style=PHASE_STYLE.get(phase, "white"))
    bar.append("░" * (width - filled), style="dim")
    bar.append(f" {done}/{total}")
    return bar


def age(timestamp: str | None, now: datetime.datetime) -> str:
    """kubectl's way: 42s, 7m, 3h, 2d."""
    if not timestamp:
        return ""
    created = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int((now - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _when(timestamp: str) -> str:
    """An API timestamp, to the second and without its zone (it is UTC)."""
    try:
        return f"{datetime.datetime.fromisoformat(timestamp.replace('Z', '+00:00')):%Y-%m-%d %H:%M:%S}"
    except ValueError:
        return timestamp


def row(obj: Mapping[str, Any], now: datetime.datetime) -> dict[str, RenderableType]:
    """The cells of a workflow's row, by column key."""
    meta = obj["metadata"]
    status = obj.get("status") or {}
    phase = phase_of(obj)
    done, total = progress_of(obj)
    return {
        "namespace": meta["namespace"],
        "name": meta["name"],
        "phase": styled(phase),
        "progress": progress_bar(done, total, phase),
        "principal": status.get("principal") or "",
        "age": age(meta.get("creationTimestamp"), now),
    }


def pending_approvals(obj: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(step, Approval name) of the steps waiting for a decision, in spec order."""
    return [
        (step["name"], step["approval"])
        for step in (obj.get("status") or {}).get("steps") or []
        if step.get("phase") == StepPhase.AWAITING_APPROVAL and step.get("approval")
    ]


def approval_of(workflow: Mapping[str, Any], approvals: Mapping[str, Mapping[str, Any]], name: str) -> Any:
    """The Approval NAME of WORKFLOW, unless the one by that name belongs to an earlier workflow of the same name."""
    approval = approvals.get(name)
    if approval is None:
        return None
    owners = approval["metadata"].get("ownerReferences") or []
    uid = workflow["metadata"].get("uid")
    if owners and uid and all(o.get("uid") != uid for o in owners):
        return None
    return approval


def approval_state(name: str, approval: Mapping[str, Any] | None) -> Text:
    text = Text(name)
    if approval is None:
        return text
    spec, status = approval.get("spec") or {}, approval.get("status") or {}
    phase = status.get("phase") or ApprovalPhase.PENDING
    text.append(f" {phase}", style=APPROVAL_STYLE.get(phase, "magenta"))
    if status.get("decidedBy"):
        text.append(f" by {status['decidedBy']}")
    tally = quorum_text(spec)
    if tally and phase == "Pending":
        text.append(f" {tally}", style="bold")
    reason = status.get("reason") or spec.get("reason")
    if reason:
        text.append(f": {reason}", style="italic")
    if phase == ApprovalPhase.PENDING:
        who = spec.get("approvers") or {}
        names = [f"groups {', '.join(who['groups'])}"] if who.get("groups") else []
        names += [f"users {', '.join(who['users'])}"] if who.get("users") else []
        asked = f"requested by {spec.get('requestedBy') or '?'}"
        text.append(f" ({asked}; approvers: {'; '.join(names)})" if names else f" ({asked})", style="dim")
    return text


def _compensation(step: Mapping[str, Any]) -> Text:
    compensation = step.get("compensation") or {}
    if not compensation.get("capability"):
        return Text("")
    text = Text(str(compensation["capability"]))
    if compensation.get("phase") == StepPhase.PENDING:  # planned, not needed so far
        text.stylize("dim")
    elif compensation.get("phase"):
        text.append(" ")
        text.append_text(styled(compensation["phase"]))
    return text


def steps_table(obj: Mapping[str, Any], approvals: Mapping[str, Mapping[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, expand=True)
    for column in ("step", "phase", "capability", "decision", "approval", "compensation"):
        table.add_column(column, overflow="fold", style="bold" if column == "step" else None)
    by_name = {s.get("name"): s for s in (obj.get("status") or {}).get("steps") or []}
    for spec_step in (obj.get("spec") or {}).get("steps") or []:
        step = by_name.get(spec_step["name"], {})
        approval_name = step.get("approval")
        table.add_row(
            spec_step["name"],
            styled(step.get("phase")),
            step_label(spec_step),
            step.get("decision") or "",
            approval_state(approval_name, approval_of(obj, approvals, approval_name)) if approval_name else "",
            _compensation(step),
        )
    return table


def step_notes(obj: Mapping[str, Any]) -> list[Text]:
    """Which policy denied or gated a step, and what went wrong: lines too long for the steps table."""
    notes = []
    for step in (obj.get("status") or {}).get("steps") or []:
        if step.get("policy") and step.get("decision") != Decision.ALLOW:
            notes.append(Text(f"  {step['name']}: {step['policy']}", style="dim"))
        if step.get("error"):
            notes.append(Text(f"  {step['name']}: {step['error']}", style="red"))
    return notes


def details(
    obj: Mapping[str, Any], approvals: Mapping[str, Mapping[str, Any]], events: Sequence[EventLine] | None
) -> RenderableType:
    """The details pane: the workflow, its steps, its conditions and its latest events."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    title = Text.assemble((f"{meta['namespace']}/{meta['name']}", "bold"), " ", styled(phase_of(obj)))
    if status.get("reason"):
        title.append(f" ({status['reason']})")
    if spec.get("rollback"):
        title.append("  rollback requested", style="yellow")
    parts: list[RenderableType] = [title]
    if spec.get("description"):
        parts.append(Text(str(spec["description"]), style="dim"))
    about = [f"principal: {status.get('principal') or '?'}"]
    about += [
        f"{what} {_when(status[key])}"
        for what, key in (("started", "startedAt"), ("finished", "finishedAt"))
        if status.get(key)
    ]
    parts.append(Text("  ·  ".join(about), style="dim"))
    if status.get("message"):
        parts.append(Text(str(status["message"])))
    parts.append(Text(""))
    parts.append(steps_table(obj, approvals))
    parts.extend(step_notes(obj))
    conditions = status.get("conditions") or []
    if conditions:
        parts.append(Text("\nconditions", style="bold"))
        line = Text("  ")
        for i, condition in enumerate(conditions):
            line.append(" · " if i else "")
            line.append(
                f"{condition['type']}={condition['status']}", style="bold" if condition["status"] == "True" else ""
            )
            if condition.get("reason"):
                line.append(f" {condition['reason']}")
            if condition.get("message") and condition["message"] != status.get("message"):
                line.append(f" ({condition['message']})", style="dim")
        parts.append(line)
    if events:
        parts.append(Text("\nevents", style="bold"))
        for event in events:
            when = f"{event.when:%H:%M:%S}" if event.when else "--:--:--"
            style = "yellow" if event.type == EventType.WARNING else ""
            parts.append(Text.assemble(f"  {when} ", (f"{event.reason:<18}", style), f" {event.message}"))
    return Group(*parts)


# -- transactions (DESIGN section 6): one row each, their calls beneath -----------------------------------------

TRANSACTION_PREFIX = "tx:"  # the table's row key of a transaction: tx:NAMESPACE/NAME (workflows: NAMESPACE/NAME)
CALL_MARK = "└ "
TRANSACTION_STYLE = {
    TransactionPhase.OPEN: "cyan",
    TransactionPhase.COMMITTED: "green",
    TransactionPhase.ROLLING_BACK: "yellow",
    TransactionPhase.ROLLED_BACK: "magenta",
    TransactionPhase.ROLLBACK_FAILED: "bold red",
    TransactionPhase.FAILED: "red",
}
CALL_STYLE = {
    CallPhase.UNDONE: "magenta",
    CallPhase.UNDOING: "yellow",
    CallPhase.UNDO_FAILED: "bold red",
    CallPhase.FAILED: "red",
    CallPhase.SUCCEEDED: "green",
}


TRANSACTION_OVER = frozenset({TransactionPhase.ROLLING_BACK, TransactionPhase.ROLLED_BACK, TransactionPhase.FAILED})


def call_order(workflow: Mapping[str, Any]) -> tuple[str, str]:
    """When a call joined its transaction (the admission webhook's stamp), then its name."""
    meta = workflow.get("metadata") or {}
    joined = (meta.get("annotations") or {}).get(JOINED_ANNOTATION) or meta.get("creationTimestamp") or ""
    return str(joined), str(meta.get("name") or "")


def transaction_of(workflow: Mapping[str, Any]) -> str | None:
    """The key of the transaction (NAMESPACE/NAME) the workflow is a call of, if any."""
    name = ((workflow.get("metadata") or {}).get("labels") or {}).get(TRANSACTION_LABEL)
    return f"{workflow['metadata']['namespace']}/{name}" if name else None


def transaction_phase(obj: Mapping[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase") or TransactionPhase.OPEN)


def transaction_row(obj: Mapping[str, Any], calls: int, now: datetime.datetime) -> dict[str, RenderableType]:
    meta, status = obj["metadata"], obj.get("status") or {}
    phase = transaction_phase(obj)
    undone = len(status.get("undone") or [])
    described = str((obj.get("spec") or {}).get("description") or "")
    name = Text.assemble(("⛁ ", "bold"), (meta["name"], "bold"), (f"  {described}"[:40], "dim") if described else "")
    counted = f"{calls} call{'s' if calls != 1 else ''}" + (f", {undone} undone" if undone else "")
    return {
        "namespace": meta["namespace"],
        "name": name,
        "phase": Text(phase, style=TRANSACTION_STYLE.get(TransactionPhase(phase), "white")),
        "progress": Text(counted),
        "principal": status.get("principal") or "",
        "age": age(meta.get("creationTimestamp"), now),
    }


def call_row(obj: Mapping[str, Any], now: datetime.datetime) -> dict[str, RenderableType]:
    """A call's row, beneath its transaction's."""
    cells = row(obj, now)
    cells["name"] = Text.assemble((CALL_MARK, "dim"), str(obj["metadata"]["name"]))
    return cells


def transaction_details(obj: Mapping[str, Any], calls: Sequence[Mapping[str, Any]]) -> RenderableType:
    """The details pane of a transaction: what it is, who began it, until when, and each call."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    phase = transaction_phase(obj)
    title = Text.assemble(
        ("transaction ", "bold"),
        (f"{meta['namespace']}/{meta['name']}", "bold"),
        " ",
        Text(phase, style=TRANSACTION_STYLE.get(TransactionPhase(phase), "white")),
    )
    if status.get("reason"):
        title.append(f" ({status['reason']})")
    parts: list[RenderableType] = [title]
    if spec.get("description"):
        parts.append(Text(str(spec["description"]), style="dim"))
    about = [f"principal: {status.get('principal') or '?'}", f"ttl {spec.get('ttlSeconds', '?')} s"]
    if status.get("expiresAt") and phase == TransactionPhase.OPEN:
        about.append(f"expires {_when(status['expiresAt'])}")
    if status.get("rollbackRequestedBy"):
        about.append(f"rollback requested by {status['rollbackRequestedBy']}")
    parts.append(Text("  ·  ".join(about), style="dim"))
    if status.get("message"):
        parts.append(Text(str(status["message"])))
    table = Table(box=None, padding=(0, 2), show_edge=False)
    for column in ("#", "call", "capability", "phase", "undone by", "finished"):
        table.add_column(column, style="bold" if column == "call" else "")
    known = {c["workflow"]: c for c in status.get("calls") or []}
    for i, workflow in enumerate(calls, 1):
        name = str(workflow["metadata"]["name"])
        recorded = known.get(name, {})
        call_phase = recorded.get("phase") or phase_of(workflow)
        style = CALL_STYLE.get(CallPhase(call_phase), "white") if call_phase in CallPhase.__members__.values() else ""
        table.add_row(
            str(i),
            name,
            recorded.get("capability")
            or ", ".join(step_label(s) for s in (workflow.get("spec") or {}).get("steps") or []),
            Text(str(call_phase), style=style),
            recorded.get("undo") or "",
            _when(recorded["finishedAt"]) if recorded.get("finishedAt") else "",
        )
    parts += [Text(""), table if calls else Text("no calls yet", style="dim")]
    if status.get("undone"):
        parts.append(Text("\nundone, in this order: " + ", ".join(status["undone"]), style="magenta"))
    return Group(*parts)
