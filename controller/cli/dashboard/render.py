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
from controller.api.workflow import Decision, EventType, StepPhase, WorkflowPhase
from controller.cli.progress import PHASE_STYLE
from controller.client.workflows import step_label

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
