"""The control plane restarts under the operator: the API server, then etcd, each stopped in the middle of
50 running workflows and started again, and the API server SIGKILLed and started again at once. Nothing
may be lost (every workflow Succeeded, every step's file written once), nothing stuck (every workflow ends
within the deadline), nothing run twice."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.workflow import TERMINAL_PHASES, WorkflowPhase
from controller.localcluster import processes
from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_saga import steps_of, wf, write
from tests.kube import Kube

WORKFLOWS = 50


@pytest.fixture
def workspace(operator: DevEnvironment, namespace: str) -> Path:
    return operator.workspaces / namespace


def _chains(prefix: str) -> str:
    return yaml.safe_dump_all(
        [
            wf(
                f"{prefix}-{i}",
                write("a", f"{prefix}/{i}-a.txt"),
                {"name": "pause", "capability": "sys.sleep", "inputs": {"seconds": 5}, "dependsOn": ["a"]},
                write("b", f"{prefix}/{i}-b.txt", ("pause",)),
            )
            for i in range(WORKFLOWS)
        ]
    )


def _workflows(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    result = kube.run("get", "workflows", "-n", namespace, "-o", "json")
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    return items


def _phases(kube: Kube, namespace: str) -> dict[str, str]:
    items = _workflows(kube, namespace)
    return {o["metadata"]["name"]: (o.get("status") or {}).get("phase", "") for o in items}


def _wait_some_running(kube: Kube, namespace: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        phases = _phases(kube, namespace).values()
        if any(phase == "Running" for phase in phases):  # their 5 s pause outlasts the restart's start
            return
        time.sleep(0.3)
    raise AssertionError(f"workflows did not start: {_phases(kube, namespace)}")


def _wait_all_terminal(kube: Kube, namespace: str, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    phases: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            phases = _phases(kube, namespace)
        except AssertionError:  # the API server may still be coming back
            time.sleep(1)
            continue
        if len(phases) == WORKFLOWS and all(
            p in TERMINAL_PHASES - {WorkflowPhase.COMPENSATION_FAILED} for p in phases.values()
        ):
            return phases
        time.sleep(1)
    stuck = {name: phase for name, phase in phases.items() if phase != "Succeeded"}
    raise AssertionError(f"not finished within {timeout:.0f} s: {stuck}")


def _restart(env: DevEnvironment, name: str, down_seconds: float, crash: bool = False) -> None:
    pid_file = env.cluster.run / f"{name}.pid"
    ended = processes.kill(pid_file, name) if crash else processes.stop(pid_file, name)
    assert ended, f"{name} was not running"
    ports = env.cluster.ports
    time.sleep(down_seconds)
    env.cluster.start()
    assert env.cluster.ports == ports  # the operator's kubeconfig still names the API server


def _check_nothing_lost(kube: Kube, namespace: str, workspace: Path, prefix: str) -> None:
    phases = _wait_all_terminal(kube, namespace, timeout=180)
    assert set(phases.values()) == {WorkflowPhase.SUCCEEDED}, {
        n: p for n, p in phases.items() if p != WorkflowPhase.SUCCEEDED
    }
    for i in range(WORKFLOWS):
        assert (workspace / prefix / f"{i}-a.txt").read_text() == "a"
        assert (workspace / prefix / f"{i}-b.txt").read_text() == "b"
    for obj in _workflows(kube, namespace):
        attempts = {name: s.get("attempts") for name, s in steps_of(obj).items()}
        assert all(a == 1 for a in attempts.values()), (obj["metadata"]["name"], attempts)


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_control_plane_restart_in_the_middle_of_fifty_workflows(
    kube: Kube, namespace: str, operator: DevEnvironment, workspace: Path, component: str
) -> None:
    prefix = component.split("-")[-1]
    kube.run("create", "-n", namespace, "-f", "-", as_="bob", stdin=_chains(prefix))
    _wait_some_running(kube, namespace)
    _restart(operator, component, down_seconds=3)
    _check_nothing_lost(kube, namespace, workspace, prefix)


def test_an_api_server_killed_and_started_again_at_once_in_the_middle_of_fifty_workflows(
    kube: Kube, namespace: str, operator: DevEnvironment, workspace: Path
) -> None:
    """SIGKILL, then started at once: its threads may still hold its port for a moment (the restart used to
    take the port for another process's and move every port, etcd's included, so it never came back)."""
    kube.run("create", "-n", namespace, "-f", "-", as_="bob", stdin=_chains("killed"))
    _wait_some_running(kube, namespace)
    _restart(operator, "kube-apiserver", down_seconds=0, crash=True)
    _check_nothing_lost(kube, namespace, workspace, "killed")
