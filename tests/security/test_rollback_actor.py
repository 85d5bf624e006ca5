"""The actor of a rollback or a deletion: recorded in the audit trail under who asked for it, not only
under the workflow's principal."""

from __future__ import annotations

from typing import Any

from controller.api.workflow import WorkflowPhase
from controller.audit.store import AuditStore
from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_saga import _kill_operator, wait_terminal, wf, write
from tests.kube import Kube


def test_rollback_by_someone_else_is_recorded_without_its_actor(
    kube: Kube, namespace: str, operator: DevEnvironment
) -> None:
    kube.apply(wf("undone", write("a", "a.txt"), write("b", "b.txt", ("a",))), namespace=namespace, as_="bob")
    assert wait_terminal(kube, namespace, "undone")["status"]["phase"] == WorkflowPhase.SUCCEEDED
    kube.run("patch", "wf", "undone", "-n", namespace, "--type=merge", "-p", '{"spec":{"rollback":true}}')
    obj = kube.wait_for(
        "wf", "undone", namespace, lambda o: o["status"]["phase"] == WorkflowPhase.COMPENSATED, what="Compensated"
    )
    assert obj["metadata"]["annotations"]["aifirst.dev/rollback-requested-by"] == "admin"
    # the annotation is the webhook's: nobody rewrites it
    result = kube.run(
        "annotate",
        "wf",
        "undone",
        "-n",
        namespace,
        "--overwrite",
        "aifirst.dev/rollback-requested-by=bob",
        check=False,
    )
    assert result.returncode != 0 and "cannot be changed" in result.stderr
    kube.apply(wf("deleted", write("a", "d.txt")), namespace=namespace, as_="bob")
    wait_terminal(kube, namespace, "deleted")
    kube.run("delete", "wf", "deleted", "-n", namespace, "--wait=true", "--timeout=30s")
    operator.stop_operator()  # flushes the audit writer; the next test gets a fresh operator
    operator.start_operator()
    store = AuditStore(operator.audit_url)
    records = [r.as_dict() for r in store.records(namespace=namespace, workflow="undone")]
    requested = [r for r in records if r["kind"] == "workflow.rollback_requested"]
    assert [(r["actor"], r["principal"]) for r in requested] == [("admin", "bob")]
    compensations = [r for r in records if r["kind"].startswith("compensation.")]
    assert compensations and all(r["actor"] == "admin" and r["principal"] == "bob" for r in compensations)
    deletion = [
        r for r in store.records(namespace=namespace, workflow="deleted") if r.kind == "workflow.deletion_requested"
    ]
    assert [(r.actor, r.principal) for r in deletion] == [("admin", "bob")]


def test_the_deleter_is_recorded_when_the_compensation_runs_after_a_restart(
    kube: Kube, namespace: str, restartable: DevEnvironment
) -> None:
    """Who deleted a workflow lived only in the memory of the replica whose DELETE webhook saw it: an
    operator restarted mid-compensation (or another replica) recorded the undoing without its actor. It is
    now read back from the audit store."""
    slow_undo = {"capability": "sys.sleep", "inputs": {"seconds": 5}}
    kube.apply(
        wf(
            "deleted-mid-undo",
            write("a", "undo.txt", compensation=slow_undo),
            {"name": "b", "capability": "sys.sleep", "inputs": {"seconds": 5}, "dependsOn": ["a"]},  # let finish first
        ),
        namespace=namespace,
        as_="bob",
    )
    kube.wait_for("wf", "deleted-mid-undo", namespace, lambda o: _phase(o, "b") == "Running", what="b running")
    kube.run("delete", "wf", "deleted-mid-undo", "-n", namespace, "--wait=false")
    kube.wait_for(
        "wf",
        "deleted-mid-undo",
        namespace,
        lambda o: _phase(o, "a") == "Compensating",
        what="a's compensation running",
    )
    _kill_operator(restartable)
    restartable.start_operator()
    gone = kube.run("wait", "--for=delete", "wf/deleted-mid-undo", "-n", namespace, "--timeout=60s", check=False)
    assert gone.returncode == 0, gone.stderr
    restartable.stop_operator()  # flushes the audit writer
    records = [r.as_dict() for r in AuditStore(restartable.audit_url).records(namespace=namespace)]
    undoing = [r for r in records if r["kind"].startswith("compensation.")]
    finished = [r for r in undoing if r["kind"] == "compensation.finished"]
    assert finished, undoing  # the restarted operator finished the compensation
    assert all((r["actor"], r["principal"]) == ("admin", "bob") for r in undoing), undoing


def _phase(obj: dict[str, Any], step: str) -> str | None:
    """The step's phase, None before the operator wrote a status."""
    return next((s.get("phase") for s in (obj.get("status") or {}).get("steps") or [] if s["name"] == step), None)
