"""`make demo`: the examples end to end against the environment of `make up`, as a user would run them
with kubectl. Reruns start afresh in namespace `demo`."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from controller.api.approval import ApprovalPhase
from controller.api.workflow import TERMINAL_PHASES, StepPhase, WorkflowPhase
from controller.localcluster.binaries import find_binaries

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("AIRUN_STATE_DIR", REPO / ".airun"))
NS = "demo"
console = Console(width=None if sys.stdout.isatty() else 110)


def kubectl(
    *args: str, context: str = "admin", check: bool = True, quiet: bool = False, stdin: str | None = None
) -> str:
    shown = ["kubectl", f"--context={context}", *args]
    if not quiet:
        console.print(f"[dim]$ {shlex.join(shown)}[/]")
    argv = [str(find_binaries() / "kubectl"), f"--kubeconfig={STATE / 'kubeconfig'}", f"--context={context}", *args]
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        console.print(f"[red]{result.stderr.strip()}[/]")
        sys.exit(1)
    return result.stdout if result.returncode == 0 else result.stderr


def approve(approval: str, context: str, check: bool = True) -> str:
    """What an approver types: the same merge patch, as their own identity."""
    patch = json.dumps({"spec": {"decision": ApprovalPhase.APPROVED}})
    return kubectl(
        "patch", "approval", approval, "-n", NS, "--type", "merge", "-p", patch, context=context, check=check
    )


def workflow(name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(kubectl("get", "wf", name, "-n", NS, "-o", "json", quiet=True))
    return out


def wait(name: str, phases: Collection[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = workflow(name)
        if obj.get("status", {}).get("phase") in phases:
            return obj
        time.sleep(0.3)
    console.print(f"[red]{name} did not reach {phases} in {timeout} s[/]")
    sys.exit(1)


def show(obj: dict[str, Any]) -> None:
    status = obj["status"]
    table = Table(
        title=f"workflow {obj['metadata']['name']}: {status['phase']}"
        + (f" ({status['reason']})" if status.get("reason") else ""),
        title_justify="left",
    )
    for column in ("step", "phase", "decision", "attempts", "compensation", "error"):
        table.add_column(column)
    for s in status["steps"]:
        compensation = (s.get("compensation") or {}).get("phase", "")
        compensation = "" if compensation == StepPhase.PENDING else compensation  # recorded, not needed
        table.add_row(
            s["name"],
            s["phase"],
            s.get("decision", ""),
            str(s.get("attempts", "")),
            compensation,
            (s.get("error") or "")[:60],
        )
    console.print(table)


def main() -> None:
    workspace = STATE / "workspaces" / NS
    console.rule("[bold]AI-First Runtime demo")
    kubectl("create", "namespace", NS, check=False, quiet=True)
    kubectl("delete", "wf,policies,approvals", "--all", "-n", NS, "--wait=true", quiet=True)

    console.rule("1. a saga that fails and compensates")
    kubectl("apply", "-n", NS, "-f", str(REPO / "examples" / "saga.yaml"), context="bob")
    show(wait("saga", TERMINAL_PHASES))
    console.print(f"files left in the workspace by the saga: {sorted(p.name for p in (workspace / 'saga').glob('*'))}")

    console.rule("2. an approval granted with kubectl patch")
    kubectl("apply", "-n", NS, "-f", str(REPO / "examples" / "approval.yaml"), context="bob")
    obj = wait("approval-gate", {WorkflowPhase.AWAITING_APPROVAL})
    approval = next(s["approval"] for s in obj["status"]["steps"] if s.get("approval"))
    console.print(kubectl("get", "approvals", "-n", NS))
    result = approve(approval, "bob", check=False)
    console.print(f"[yellow]bob may not approve:[/] {result.strip()}")
    approve(approval, "alice")
    show(wait("approval-gate", TERMINAL_PHASES))
    console.print(kubectl("get", "approval", approval, "-n", NS, "-o", "wide"))

    console.rule("3. a step denied by policy")
    kubectl("apply", "-n", NS, "-f", str(REPO / "examples" / "denied.yaml"), context="admin")
    show(wait("cleanup", TERMINAL_PHASES))

    console.rule("what the cluster shows")
    console.print(kubectl("get", "wf", "-n", NS))
    console.print(kubectl("describe", "wf", "saga", "-n", NS).split("Events:")[-1])

    console.rule("the audit trail: who approved, what ran")
    run = workflow("approval-gate")["metadata"]["uid"][:8]
    show_trail = [
        "audit",
        "show",
        "-n",
        NS,
        "-w",
        "approval-gate",
        "--run",
        run,
        "--kind",
        "approval",
        "--kind",
        "step.started",
    ]
    console.print(f"[dim]$ airun {shlex.join(show_trail)}[/]")
    trail = subprocess.run(
        [sys.executable, "-m", "controller.cli.main", *show_trail],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "AIRUN_STATE_DIR": str(STATE), "COLUMNS": str(console.width)},
    )
    console.print(trail.stdout or trail.stderr, soft_wrap=True, highlight=False, markup=False)

    console.rule("one left for you")
    manifest = (REPO / "examples" / "approval.yaml").read_text().replace("name: approval-gate", "name: for-you")
    kubectl("apply", "-n", NS, "-f", "-", context="bob", stdin=manifest)
    wait("for-you", {WorkflowPhase.AWAITING_APPROVAL})
    console.print(
        "workflow [bold]for-you[/] waits for a person. Try:\n"
        "  export KUBECONFIG=$PWD/.airun/kubeconfig PATH=$PWD/.venv/bin:$PATH\n"
        f"  [bold]airun dashboard -n {NS} --context alice[/]   # live; a approve, r reject, R roll back, ? help\n"
        f"  airun status for-you -n {NS}                  # or: kubectl airun status for-you -n {NS}\n"
        f"  airun run examples/hello.yaml -n {NS} --context bob   # follow a run step by step\n"
        "  [bold]make down[/] stops everything (the data is kept for the next make up)",
        soft_wrap=True,
        highlight=False,
    )


if __name__ == "__main__":
    main()
