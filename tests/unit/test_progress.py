"""The live view of `airun run`: what it shows for each state, on a terminal and in a log."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from controller.cli import progress


def workflow(phase: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": "gate", "namespace": "demo"},
        "spec": {
            "steps": [{"name": "draft", "capability": "io.fs.write_file"}, {"name": "review", "type": "Approval"}]
        },
        "status": {"phase": phase, "steps": steps},
    }


RUNNING = workflow(
    "AwaitingApproval",
    [
        {"name": "draft", "phase": "Succeeded", "decision": "ALLOW", "attempts": 1,
         "startedAt": "2026-11-22T10:00:00.000Z", "finishedAt": "2026-11-22T10:00:00.250Z"},
        {"name": "review", "phase": "AwaitingApproval", "approval": "gate-review"},
    ],
)  # fmt: skip
DONE = workflow("Succeeded", [{"name": "draft", "phase": "Succeeded"}, {"name": "review", "phase": "Succeeded"}])


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=160, color_system=None), out


def test_the_table_shows_capabilities_durations_progress_and_what_to_do() -> None:
    screen, out = console(terminal=True)
    screen.print(progress.render(RUNNING, started=0.0))
    text = out.getvalue()
    assert "demo/gate AwaitingApproval" in text and "1/2 steps" in text
    assert "io.fs.write_file" in text and "250ms" in text
    assert "approve: airun approve gate-review -n demo" in text


def test_on_a_terminal_it_redraws_until_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "POLL_SECONDS", 0.01)
    states = iter([RUNNING, RUNNING, DONE])
    screen, out = console(terminal=True)
    final = progress.follow(lambda: next(states), screen, timeout=10)
    assert final is DONE
    assert "AwaitingApproval" in out.getvalue()


def test_in_a_log_each_transition_is_one_line() -> None:
    states = iter([RUNNING, RUNNING, DONE])
    log, out = console(terminal=False)
    progress.follow(lambda: next(states), log, timeout=10)
    lines = out.getvalue().splitlines()
    assert lines == [
        "  draft: Succeeded",
        "  review: AwaitingApproval  (approve: airun approve gate-review -n demo)",
        "  review: Succeeded",
    ]


def test_it_stops_at_the_timeout_with_the_last_state() -> None:
    log, _ = console(terminal=False)
    assert progress.follow(lambda: RUNNING, log, timeout=0.05) is RUNNING
