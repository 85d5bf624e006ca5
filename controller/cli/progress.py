"""Live per-step progress of one workflow for `airun run`: a rich table redrawn in place on a terminal,
one line per step transition when the output is a pipe or a file (logs of CI jobs stay readable)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from controller.api.workflow import TERMINAL_PHASES, StepPhase
from controller.client.workflows import step_label

# Step and workflow phases share their names (a workflow has no Skipped, a step no other extra).
PHASE_STYLE: dict[str, str] = {
    StepPhase.SUCCEEDED: "green",
    StepPhase.COMPENSATED: "yellow",
    StepPhase.FAILED: "red",
    StepPhase.COMPENSATION_FAILED: "bold red",
    StepPhase.RUNNING: "cyan",
    StepPhase.AWAITING_APPROVAL: "magenta",
    StepPhase.COMPENSATING: "yellow",
    StepPhase.SKIPPED: "dim",
}
POLL_SECONDS = 0.5


def styled(phase: str | None) -> str:
    phase = phase or StepPhase.PENDING
    return f"[{PHASE_STYLE.get(phase, 'white')}]{phase}[/]"


def _seconds(step: dict[str, Any], now: datetime) -> str:
    if not step.get("startedAt"):
        return ""
    started = datetime.fromisoformat(step["startedAt"].replace("Z", "+00:00"))
    finished = datetime.fromisoformat(step["finishedAt"].replace("Z", "+00:00")) if step.get("finishedAt") else now
    seconds = max((finished - started).total_seconds(), 0.0)
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def note(step: dict[str, Any], namespace: str) -> str:
    """What a person should know about STEP right now (what to do, for an approval)."""
    if step.get("phase") == StepPhase.AWAITING_APPROVAL and step.get("approval"):
        return f"approve: airun approve {step['approval']} -n {namespace}"
    compensation = step.get("compensation") or {}
    if compensation.get("phase") not in (None, StepPhase.PENDING):
        return f"undo {compensation.get('capability')}: {compensation['phase']}"
    return str(step.get("error") or "")


def render(obj: dict[str, Any], started: float) -> Group:
    """The workflow as a header with a progress bar and a table of its steps."""
    meta, status = obj["metadata"], obj.get("status") or {}
    capability = {s["name"]: step_label(s) for s in obj.get("spec", {}).get("steps", [])}
    steps = status.get("steps") or [{"name": name} for name in capability]
    done = sum(1 for s in steps if s.get("phase") == StepPhase.SUCCEEDED)
    header = Table.grid(padding=(0, 2))
    header.add_row(
        Text.from_markup(f"[bold]{meta['namespace']}/{meta['name']}[/] {styled(status.get('phase'))}"),
        ProgressBar(total=max(len(steps), 1), completed=done, width=30),
        f"{done}/{len(steps)} steps",
        f"{time.monotonic() - started:.0f}s",
    )
    table = Table(expand=False)
    for column in ("step", "capability", "phase", "decision", "tries", "time", ""):
        table.add_column(column, overflow="fold")
    now = datetime.now(UTC)
    for step in steps:
        table.add_row(
            step["name"],
            capability.get(step["name"], ""),
            styled(step.get("phase")),
            step.get("decision") or "",
            str(step.get("attempts") or ""),
            _seconds(step, now),
            note(step, meta["namespace"]),
        )
    return Group(header, table)


def follow(get: Callable[[], dict[str, Any]], console: Console, timeout: float) -> dict[str, Any]:
    """Poll the workflow (GET) until it ends or TIMEOUT passes; returns the last object seen."""
    started = time.monotonic()
    deadline = started + timeout
    obj = get()
    if not console.is_terminal:
        return _follow_lines(get, obj, console, deadline)
    with Live(render(obj, started), console=console, refresh_per_second=4, transient=True) as live:
        while (obj.get("status") or {}).get("phase") not in TERMINAL_PHASES and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            obj = get()
            live.update(render(obj, started))
    return obj


def _follow_lines(
    get: Callable[[], dict[str, Any]], obj: dict[str, Any], console: Console, deadline: float
) -> dict[str, Any]:
    seen: dict[str, str] = {}
    namespace = obj["metadata"]["namespace"]
    while True:
        for step in (obj.get("status") or {}).get("steps", []):
            phase = step.get("phase", StepPhase.PENDING)
            if seen.get(step["name"]) != phase:
                seen[step["name"]] = phase
                extra = note(step, namespace)
                console.print(f"  {step['name']}: {styled(phase)}" + (f"  ({extra})" if extra else ""))
        if (obj.get("status") or {}).get("phase") in TERMINAL_PHASES or time.monotonic() >= deadline:
            return obj
        time.sleep(POLL_SECONDS)
        obj = get()
