"""Workflows run as sagas by the real operator (its own process) against the real API server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from controller.api.workflow import TERMINAL_PHASES, Reason, StepPhase, WorkflowPhase
from controller.localcluster import processes
from controller.localcluster.devenv import DevEnvironment
from tests.kube import Kube


def wf(name: str, *steps: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {"steps": list(steps), **spec},
    }


def write(name: str, path: str, deps: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "capability": "io.fs.write_file",
        "dependsOn": list(deps),
        "inputs": {"path": path, "content": name},
        **extra,
    }


def ledger(
    name: str, capability: str, seconds: float, deps: tuple[str, ...] = (), book: str = "book", **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "capability": capability,
        "dependsOn": list(deps),
        "inputs": {"ledger": book, "entry": name, "seconds": seconds},
        **extra,
    }


def wait_terminal(kube: Kube, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    return kube.wait_for(
        "wf",
        name,
        namespace,
        lambda o: o.get("status", {}).get("phase") in TERMINAL_PHASES,
        timeout=timeout,
        what="terminal phase",
    )


def steps_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in obj["status"]["steps"]}


@pytest.fixture
def workspace(operator: DevEnvironment, namespace: str) -> Path:
    return operator.workspaces / namespace


def test_parallel_branches_overlap(kube: Kube, namespace: str, workspace: Path) -> None:
    kube.apply(
        wf(
            "par",
            write("root", "root.txt"),
            ledger("left", "test.ledger.record", 1.0, ("root",), book="left"),
            ledger("right", "test.ledger.record", 1.0, ("root",), book="right"),
            write("join", "join.txt", ("left", "right")),
        ),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_terminal(kube, namespace, "par")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, obj["status"]
    s = steps_of(obj)
    assert s["left"]["startedAt"] < s["right"]["finishedAt"] and s["right"]["startedAt"] < s["left"]["finishedAt"]
    assert s["join"]["startedAt"] >= max(s["left"]["finishedAt"], s["right"]["finishedAt"])
    assert (workspace / "join.txt").read_text() == "join"
    assert kube.run("wait", "--for=condition=Completed", "wf/par", "-n", namespace, "--timeout=5s").returncode == 0


def test_step_three_of_four_fails_and_steps_two_then_one_are_compensated(
    kube: Kube, namespace: str, workspace: Path
) -> None:
    (workspace).mkdir(parents=True, exist_ok=True)
    (workspace / "one.txt").write_text("before")
    kube.apply(
        wf(
            "saga",
            write("s1", "one.txt"),
            write("s2", "two.txt", ("s1",)),
            {"name": "s3", "capability": "test.fail", "dependsOn": ["s2"], "retry": {"limit": 0}},
            write("s4", "four.txt", ("s3",)),
        ),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_terminal(kube, namespace, "saga")
    status = obj["status"]
    assert status["phase"] == WorkflowPhase.COMPENSATED and status["reason"] == Reason.STEP_FAILED
    s = steps_of(obj)
    assert [s[n]["phase"] for n in ("s1", "s2", "s3", "s4")] == ["Compensated", "Compensated", "Failed", "Skipped"]
    assert s["s2"]["compensation"]["finishedAt"] <= s["s1"]["compensation"]["startedAt"]
    assert (workspace / "one.txt").read_text() == "before"  # restored, not deleted
    assert not (workspace / "two.txt").exists() and not (workspace / "four.txt").exists()
    completed = next(c for c in status["conditions"] if c["type"] == "Completed")
    assert completed["status"] == "True" and completed["reason"] == "Compensated"
    events = kube.events_of("saga", namespace, contains="Compensated")
    assert "Compensated" in events


def test_fails_twice_then_succeeds_on_the_third_attempt(kube: Kube, namespace: str, operator: object) -> None:
    kube.apply(
        wf(
            "flaky",
            {
                "name": "f",
                "capability": "test.fail",
                "inputs": {"failTimes": 2},
                "retry": {"limit": 2, "backoffSeconds": 0.2},
            },
        ),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_terminal(kube, namespace, "flaky")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED
    assert steps_of(obj)["f"]["attempts"] == 3 and steps_of(obj)["f"]["outputs"] == {"attempt": 3}


def test_retry_exhaustion(kube: Kube, namespace: str, operator: object) -> None:
    kube.apply(
        wf(
            "exhausted",
            {
                "name": "f",
                "capability": "test.fail",
                "inputs": {"failTimes": 5},
                "retry": {"limit": 1, "backoffSeconds": 0.1},
            },
        ),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_terminal(kube, namespace, "exhausted")
    assert obj["status"]["phase"] == WorkflowPhase.FAILED and obj["status"]["reason"] == Reason.STEP_FAILED
    assert steps_of(obj)["f"]["attempts"] == 2
    assert "failed after 2 attempts" in obj["status"]["message"]


def test_step_timeout(kube: Kube, namespace: str, operator: object) -> None:
    kube.apply(
        wf(
            "slow",
            {
                "name": "f",
                "capability": "test.fail",
                "inputs": {"failTimes": 0, "seconds": 30},
                "timeoutSeconds": 1,
                "retry": {"limit": 0},
            },
        ),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_terminal(kube, namespace, "slow", timeout=20)
    assert obj["status"]["phase"] == WorkflowPhase.FAILED
    assert "timed out after 1" in steps_of(obj)["f"]["error"]


def test_workflow_timeout_compensates(kube: Kube, namespace: str, workspace: Path) -> None:
    kube.apply(
        wf(
            "deadline",
            write("w", "w.txt"),
            {"name": "nap", "capability": "sys.sleep", "dependsOn": ["w"], "inputs": {"seconds": 60}},
            timeoutSeconds=2,
        ),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_terminal(kube, namespace, "deadline", timeout=30)
    assert obj["status"]["phase"] == WorkflowPhase.COMPENSATED and obj["status"]["reason"] == Reason.TIMEOUT
    assert not (workspace / "w.txt").exists()


def test_rollback_of_a_succeeded_workflow(kube: Kube, namespace: str, workspace: Path) -> None:
    kube.apply(wf("rb", write("a", "a.txt"), write("b", "b.txt", ("a",))), namespace=namespace, as_="bob")
    assert wait_terminal(kube, namespace, "rb")["status"]["phase"] == WorkflowPhase.SUCCEEDED
    assert (workspace / "b.txt").exists()
    kube.run("patch", "wf", "rb", "-n", namespace, "--type=merge", "-p", '{"spec":{"rollback":true}}', as_="bob")
    obj = kube.wait_for(
        "wf", "rb", namespace, lambda o: o["status"]["phase"] == WorkflowPhase.COMPENSATED, what="Compensated"
    )
    assert obj["status"]["reason"] == Reason.ROLLBACK_REQUESTED
    assert not (workspace / "a.txt").exists() and not (workspace / "b.txt").exists()


def test_deleting_a_running_workflow_compensates_it_first(kube: Kube, namespace: str, workspace: Path) -> None:
    kube.apply(
        wf(
            "gone",
            write("a", "a.txt"),
            {"name": "nap", "capability": "sys.sleep", "dependsOn": ["a"], "inputs": {"seconds": 2}},
        ),
        namespace=namespace,
        as_="bob",
    )
    kube.wait_for(
        "wf",
        "gone",
        namespace,
        lambda o: (
            steps_of(o).get("nap", {}).get("phase") == StepPhase.RUNNING if o.get("status", {}).get("steps") else False
        ),
        what="nap running",
    )
    assert (workspace / "a.txt").exists()
    kube.run("delete", "wf", "gone", "-n", namespace, "--wait=true", "--timeout=30s", as_="bob")
    assert not (workspace / "a.txt").exists()


# -- crash recovery -----------------------------------------------------------------------------------


def _kill_operator(env: DevEnvironment) -> None:
    assert processes.kill(env.operator_pid, "controller")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _crash_during_middle_step(
    kube: Kube, namespace: str, workspace: Path, env: DevEnvironment, name: str, capability: str
) -> dict[str, Any]:
    """Runs before -> middle (a 3 s ledger step of CAPABILITY) -> after, kills the operator with SIGKILL
    while the middle step runs, restarts it, and returns the workflow once it has ended."""
    kube.apply(
        wf(
            name,
            write("before", "before.txt"),
            ledger("middle", capability, 3, ("before",)),
            write("after", "after.txt", ("middle",)),
        ),
        namespace=namespace,
        as_="bob",
    )
    kube.wait_for(
        "wf", name, namespace, lambda o: bool(_lines(workspace / "ledgers" / "book.starts")), what="middle step started"
    )
    _kill_operator(env)
    env.start_operator()
    return wait_terminal(kube, namespace, name)


def test_crash_idempotent_step_runs_again_with_the_same_key(
    kube: Kube, namespace: str, workspace: Path, restartable: DevEnvironment
) -> None:
    obj = _crash_during_middle_step(kube, namespace, workspace, restartable, "crash-idem", "test.ledger.record")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, obj["status"]
    key = steps_of(obj)["middle"]["idempotencyKey"]
    starts = _lines(workspace / "ledgers" / "book.starts")
    assert [line.split()[0] for line in starts] == [key, key]  # ran again, with the same key
    assert _lines(workspace / "ledgers" / "book.log") == [f"{key} middle"]  # one side effect, not two
    assert (workspace / "after.txt").exists() and (workspace / "before.txt").read_text() == "before"
    reasons = kube.events_of("crash-idem", namespace, contains="Recovered")
    assert "Recovered" in reasons


def test_crash_non_idempotent_step_ends_in_doubt_and_is_compensated(
    kube: Kube, namespace: str, workspace: Path, restartable: DevEnvironment
) -> None:
    obj = _crash_during_middle_step(kube, namespace, workspace, restartable, "crash-once", "test.ledger.append")
    status = obj["status"]
    assert status["phase"] == WorkflowPhase.COMPENSATED and status["reason"] == Reason.IN_DOUBT, status
    s = steps_of(obj)
    assert s["middle"].get("inDoubt") is True and s["middle"]["phase"] == StepPhase.COMPENSATED
    assert s["before"]["phase"] == StepPhase.COMPENSATED and s["after"]["phase"] == StepPhase.SKIPPED
    key = s["middle"]["idempotencyKey"]
    assert len(_lines(workspace / "ledgers" / "book.starts")) == 1  # never run twice
    assert _lines(workspace / "ledgers" / "book.log") == []  # whatever happened was undone
    assert [line.split()[0] for line in _lines(workspace / "ledgers" / "book.erasures")] == [key]
    assert not (workspace / "before.txt").exists() and not (workspace / "after.txt").exists()


def test_fifty_workflows_at_once(kube: Kube, namespace: str, workspace: Path) -> None:
    items = [wf(f"many-{i}", write("a", f"many/{i}-a.txt"), write("b", f"many/{i}-b.txt", ("a",))) for i in range(50)]
    kube.apply({"apiVersion": "v1", "kind": "List", "items": items}, namespace=namespace, as_="bob")
    deadline = time.monotonic() + 120
    phases: list[str] = []
    while time.monotonic() < deadline:
        out = kube.run("get", "wf", "-n", namespace, "-o", "jsonpath={.items[*].status.phase}").stdout
        phases = out.split()
        if len(phases) == 50 and all(p in TERMINAL_PHASES for p in phases):
            break
        time.sleep(0.5)
    assert phases == ["Succeeded"] * 50
    assert len(list((workspace / "many").iterdir())) == 100


def test_rollback_right_after_success_is_never_lost(kube: Kube, namespace: str, workspace: Path) -> None:
    """A rollback that arrives while the operator is finishing the workflow (the race a slow test
    once caught): every one is carried out."""
    for i in range(5):
        kube.apply(wf(f"quick-{i}", write("a", f"quick-{i}.txt")), namespace=namespace, as_="bob")
        kube.wait_for(
            "wf",
            f"quick-{i}",
            namespace,
            lambda o: o.get("status", {}).get("phase") == WorkflowPhase.SUCCEEDED,
            what="Succeeded",
        )
        kube.run("patch", "wf", f"quick-{i}", "-n", namespace, "--type=merge", "-p", '{"spec":{"rollback":true}}')
    for i in range(5):
        kube.wait_for(
            "wf",
            f"quick-{i}",
            namespace,
            lambda o: o["status"]["phase"] == WorkflowPhase.COMPENSATED,
            what="Compensated",
            timeout=20,
        )
        assert not (workspace / f"quick-{i}.txt").exists()
