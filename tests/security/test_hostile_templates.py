"""Hostile templates and patterns, written by an ordinary author (bob), against the real API server and
the real operator process: none of them may leave a workflow without a phase, stall the event loop
(other workflows, the admission webhooks) or wedge the operator again after a restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.workflow import Reason, WorkflowPhase
from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_saga import _kill_operator, steps_of, wait_terminal, wf, write
from tests.kube import Kube


@pytest.fixture
def workspace(operator: DevEnvironment, namespace: str) -> Path:
    return operator.workspaces / namespace


# Loops 10^10 times and prints nothing: only a time limit stops it (the output cap never fires).
# How long a bystander may wait behind hostile templates: typically under 2.5 s, generous for a loaded machine.
BYSTANDER_BOUND = 12.0

RUNAWAY = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}done"


def _step(name: str, capability: str, **inputs: Any) -> dict[str, Any]:
    return {"name": name, "capability": capability, "inputs": inputs}


def _error_of(obj: dict[str, Any], step: str) -> str:
    return str(steps_of(obj)[step].get("error") or "")


def test_huge_int_template_leaves_the_workflow_without_a_phase(kube: Kube, namespace: str, operator: object) -> None:
    kube.apply(
        wf("pow", write("w", "pow.txt") | {"inputs": {"path": "pow.txt", "content": "{{ 7 ** 2000000 }}"}}),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_terminal(kube, namespace, "pow", timeout=30)
    assert obj["status"]["phase"] == WorkflowPhase.FAILED, obj["status"]
    assert obj["status"]["reason"] == Reason.STEP_FAILED
    assert _error_of(obj, "w").startswith("inputs.content: 7 ** 2000000 is too large"), obj["status"]


def test_runaway_template_stalls_bystanders_and_admission(kube: Kube, namespace: str, workspace: Path) -> None:
    # Three runaways (more than the renderer has worker processes) and a bystander, applied at once.
    hostile = [
        wf(f"runaway-{i}", write("w", f"r{i}.txt") | {"inputs": {"path": f"r{i}.txt", "content": RUNAWAY}})
        for i in range(3)
    ]
    bystander = wf("bystander", write("w", "b-{{ params.size }}.txt"), params={"size": 1})
    started = time.monotonic()
    kube.apply(yaml.safe_dump_all([*hostile, bystander]), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "bystander", timeout=30)
    latency = time.monotonic() - started
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, (obj["spec"], obj["status"])
    assert (workspace / "b-1.txt").exists()
    # Without the isolation the runaways never end and the bystander never runs; 2.5 s is typical here, the
    # bound leaves room for a machine loaded by other work (8 s measured at a load average of 10).
    assert latency < BYSTANDER_BOUND, f"the bystander took {latency:.1f} s"

    # The admission webhooks (served by the same event loop) still answer.
    dry = kube.apply(wf("dry", write("w", "dry.txt")), namespace=namespace, as_="bob", dry_run=True, check=False)
    assert dry.returncode == 0, dry.stderr

    for i in range(3):
        runaway = wait_terminal(kube, namespace, f"runaway-{i}", timeout=30)
        assert runaway["status"]["phase"] == WorkflowPhase.FAILED, runaway["status"]
        assert _error_of(runaway, "w") == "inputs.content: the template did not finish within 2 s"
    assert time.monotonic() - started < 25  # three 2 s limits and their restarts, on a loaded machine


def test_huge_template_source_stalls_the_operator_while_it_compiles(
    kube: Kube, namespace: str, workspace: Path
) -> None:
    # Only reads of values, but 60,000 of them: compiling it takes Jinja tens of seconds of CPU.
    huge = wf("huge", write("w", "h.txt") | {"inputs": {"path": "h.txt", "content": "{{ params.x }}" * 60000}})
    huge["spec"]["params"] = {"x": "a"}
    bystander = wf("bystander", write("w", "b.txt"))
    started = time.monotonic()
    # create, not apply: apply's last-applied annotation would double an object this large
    kube.run("create", "-n", namespace, "-f", "-", as_="bob", stdin=yaml.safe_dump_all([huge, bystander]))
    obj = wait_terminal(kube, namespace, "bystander", timeout=30)
    latency = time.monotonic() - started
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, obj["status"]
    # Compiling the huge template on the event loop takes 20-55 s of CPU here: far beyond the bound.
    assert latency < BYSTANDER_BOUND, f"the bystander took {latency:.1f} s"
    failed = wait_terminal(kube, namespace, "huge", timeout=30)
    assert failed["status"]["phase"] == WorkflowPhase.FAILED, failed["status"]
    assert _error_of(failed, "w") == "inputs.content: the template did not finish within 2 s"


def test_runaway_template_wedges_the_operator_again_after_a_restart(
    kube: Kube, namespace: str, restartable: DevEnvironment
) -> None:
    kube.apply(
        wf("wedge", write("w", "wedge.txt") | {"inputs": {"path": "wedge.txt", "content": RUNAWAY}}),
        namespace=namespace,
        as_="bob",
    )
    _kill_operator(restartable)  # before or while it renders: the new process finds the workflow at start
    restartable.start_operator()
    obj = wait_terminal(kube, namespace, "wedge", timeout=30)
    assert obj["status"]["phase"] == WorkflowPhase.FAILED, obj["status"]
    assert _error_of(obj, "w") == "inputs.content: the template did not finish within 2 s"


def test_runaway_text_render_template_stalls_the_operator(kube: Kube, namespace: str, operator: object) -> None:
    # {% raw %}: the step's own template rendering passes the template through; text.render runs it.
    template = "{% raw %}" + RUNAWAY + "{% endraw %}"
    kube.apply(wf("render", _step("r", "text.render", template=template, values={})), namespace=namespace, as_="bob")
    bystander = wf(
        "bystander", _step("r", "text.render", template="{% raw %}{{ count + 1 }}{% endraw %}", values={"count": 1})
    )
    kube.apply(bystander, namespace=namespace, as_="bob")
    done = wait_terminal(kube, namespace, "bystander", timeout=10)
    assert done["status"]["phase"] == WorkflowPhase.SUCCEEDED and steps_of(done)["r"]["outputs"] == {"text": "2"}
    obj = wait_terminal(kube, namespace, "render", timeout=30)
    assert obj["status"]["phase"] == WorkflowPhase.FAILED, obj["status"]
    assert _error_of(obj, "r") == "template: the template did not finish within 2 s"


def test_catastrophic_backtracking_regex_never_finishes(kube: Kube, namespace: str, operator: object) -> None:
    # `(a+)+$` against a's and a b: Python's re backtracks 2^n times; RE2 is linear.
    kube.apply(
        wf("redos", _step("x", "text.regex_extract", text="a" * 64 + "b", pattern="(a+)+$")),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_terminal(kube, namespace, "redos", timeout=15)
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, obj["status"]
    assert steps_of(obj)["x"]["outputs"].get("match") is None  # no match (status keeps no nulls)
    # What RE2 cannot do in linear time (backreferences) is a clear, final error.
    kube.apply(
        wf("backref", _step("x", "text.regex_extract", text="aa", pattern=r"(a)\1")), namespace=namespace, as_="bob"
    )
    refused = wait_terminal(kube, namespace, "backref", timeout=15)
    assert refused["status"]["phase"] == WorkflowPhase.FAILED, refused["status"]
    assert "RE2 syntax" in _error_of(refused, "x") and steps_of(refused)["x"]["attempts"] == 1
