"""A finished workflow is not held in the operator's memory, and a stale watch event of a runner's own
writes never runs it again (controller/operator/runtime.py, observe). No cluster: the runtime and the
runner are the real ones, on a connection that is never used (a workflow that would start a runner here
would fail on it, and the runner table says so)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import kopf
from kubernetes_asyncio import client

from controller.api.metadata import FINALIZER, FINISHED_LABEL
from controller.capabilities import registry as capability_registry
from controller.operator.admission import finished_label_refusal
from controller.operator.kube import Connection
from controller.operator.runner import LastWrite, Runner
from controller.operator.runtime import RuntimeSettings, WorkflowRuntime
from controller.operator.shards import Standalone

UID = "0b3c5e1a-finished"
SPEC = {"steps": [{"name": "s0", "capability": "sys.sleep", "inputs": {"seconds": 0}}]}
# As the runner dumps them (WorkflowStatus.dump), which is what the API server then holds
RUNNING = {
    "phase": "Running",
    "principal": "bob",
    "steps": [{"name": "s0", "phase": "Running", "attempts": 1, "idempotencyKey": "k"}],
    "conditions": [],
}
SUCCEEDED = {
    "phase": "Succeeded",
    "principal": "bob",
    "steps": [{"name": "s0", "phase": "Succeeded", "attempts": 1, "idempotencyKey": "k", "completion": 1}],
    "conditions": [],
}


def body(status: dict[str, Any], *, finalizer: bool) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": "aifirst.dev/v1alpha1",
            "kind": "Workflow",
            "metadata": {
                "name": "wf",
                "namespace": "ns",
                "uid": UID,
                "generation": 1,
                "finalizers": [FINALIZER] if finalizer else [],
            },
            "spec": SPEC,
            "status": status,
        }
    )


def runtime(tmp_path: Path) -> WorkflowRuntime:
    configuration = client.Configuration(host="https://127.0.0.1:1")  # never reached
    connection = Connection(client.ApiClient(configuration), configuration)
    return WorkflowRuntime(connection, capability_registry.load(), RuntimeSettings(workspaces=tmp_path))


async def closed(rt: WorkflowRuntime) -> None:
    await rt.shutdown()
    await rt.connection.close()


def test_a_stale_echo_after_the_runner_ended_does_not_run_the_workflow_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        rt = runtime(tmp_path)
        rt.runner_ended(UID, LastWrite(SUCCEEDED, finalizer=False))  # ended before the watch showed it
        await rt.observe(body(RUNNING, finalizer=True))  # an echo of an earlier write: looks interrupted
        assert rt.runners == {}
        assert UID in rt.finished
        await rt.observe(body(SUCCEEDED, finalizer=False))  # the watch caught up: nothing left to remember
        assert rt.runners == {} and rt.finished == {}
        await closed(rt)

    asyncio.run(scenario())


def test_a_runner_whose_last_write_the_watch_showed_leaves_nothing_behind(tmp_path: Path) -> None:
    async def scenario() -> None:
        rt = runtime(tmp_path)
        runner = Runner(rt, body(RUNNING, finalizer=True))
        assert runner.last_write() is None  # it wrote nothing the watch has not shown
        runner.written, runner.finalizer_set = SUCCEEDED, False  # what _write and _remove_finalizer record
        assert runner.last_write() == LastWrite(SUCCEEDED, finalizer=False)
        runner.update(body(SUCCEEDED, finalizer=False))  # the echo of that write, while still running
        assert runner.last_write() is None
        rt.runner_ended(UID, runner.last_write())
        assert rt.finished == {}
        await rt.observe(body(SUCCEEDED, finalizer=False))  # a later event of the finished workflow
        assert rt.runners == {} and rt.finished == {}
        await closed(rt)

    asyncio.run(scenario())


def test_the_echo_of_the_finished_label_is_not_taken_for_a_deletion(tmp_path: Path) -> None:
    """The runner's last write labels the workflow finished; the watch (selector !aifirst.dev/finished) then
    shows it leaving as DELETED with the body from before. Its snapshots stay: a rollback may need them."""

    async def scenario() -> None:
        rt = runtime(tmp_path)
        folder = tmp_path / "ns" / ".airun" / "snapshots" / UID
        folder.mkdir(parents=True)
        rt.runner_ended(UID, LastWrite(SUCCEEDED, finalizer=False, finished_label=True))
        await rt.gone(body(SUCCEEDED, finalizer=True))  # no GET: the connection here is never reached
        assert folder.is_dir() and rt.finished == {} and UID not in rt.phases
        deleted = dict(body(SUCCEEDED, finalizer=False))
        deleted["metadata"] = {**deleted["metadata"], "deletionTimestamp": "2026-12-01T00:00:00Z"}
        await rt.gone(kopf.Body(deleted))
        assert not folder.exists()  # a deletion collects them
        await closed(rt)

    asyncio.run(scenario())


def test_a_runner_labels_only_what_is_finished_for_good(tmp_path: Path) -> None:
    async def scenario() -> None:
        rt = runtime(tmp_path)
        runner = Runner(rt, body(SUCCEEDED, finalizer=True))
        assert runner._done_for_good()
        runner.spec = runner.spec.model_copy(update={"rollback": True})  # a rollback asked for: work again
        assert not runner._done_for_good()
        failed = Runner(rt, body({**SUCCEEDED, "phase": "CompensationFailed"}, finalizer=True))
        assert not failed._done_for_good()  # waits for a person: stays watched (and counted)
        running = Runner(rt, body(RUNNING, finalizer=True))
        assert not running._done_for_good()
        await closed(rt)

    asyncio.run(scenario())


def finished(phase: str = "Succeeded", *, label: str | None, finalizer: bool = False, rollback: bool = False) -> Any:
    return {
        "metadata": {
            "labels": {FINISHED_LABEL: label} if label is not None else {},
            "finalizers": [FINALIZER] if finalizer else [],
        },
        "spec": {**SPEC, "rollback": rollback},
        "status": {"phase": phase},
    }


def test_who_may_label_a_workflow_finished() -> None:
    assert finished_label_refusal(finished(label=None), finished(label="true")) is None  # the operator's write
    assert finished_label_refusal(finished(label="true"), finished(label=None)) is None  # removal: watched again
    assert finished_label_refusal(finished("Running", label=None), finished("Running", label="true"))
    assert finished_label_refusal(finished(label=None, finalizer=True), finished(label="true", finalizer=True))
    assert finished_label_refusal(finished(label=None), finished(label="true", rollback=True))  # still to do
    compensated = finished("Compensated", label=None, rollback=True)
    assert (
        finished_label_refusal(compensated, {**compensated, "metadata": {"labels": {FINISHED_LABEL: "true"}}}) is None
    )
    assert finished_label_refusal(
        finished("CompensationFailed", label=None), finished("CompensationFailed", label="true")
    )
    assert finished_label_refusal(finished(label=None), finished(label="yes"))


class OwnsNothing(Standalone):
    """Another replica holds every shard."""

    def owns(self, uid: str) -> bool:
        return False


def test_a_replica_that_does_not_own_the_workflow_reads_nothing_back_when_it_leaves(tmp_path: Path) -> None:
    """Every replica sees each finished workflow leave; only the owner may need to read it back (here a GET
    would fail: the connection is never reached), and the owner collects the snapshots of a deletion."""

    async def scenario() -> None:
        rt = runtime(tmp_path)
        rt.shards = OwnsNothing()
        folder = tmp_path / "ns" / ".airun" / "snapshots" / UID
        folder.mkdir(parents=True)
        await rt.gone(body(SUCCEEDED, finalizer=True))
        assert folder.is_dir()
        await closed(rt)

    asyncio.run(scenario())


def test_a_runners_task_does_not_keep_the_watch_event_that_started_it() -> None:
    """kopf's handler variables hold the event's cause (its whole body); a task keeps a copy of the context
    it was created in for as long as it runs, so the runner's task is created without them, but with the
    variables kopf.event needs."""
    import contextvars

    from kopf._core.actions import execution
    from kopf._core.engines import posting

    from controller.operator.runtime import _runner_context

    def in_a_handler() -> contextvars.Context:
        execution.cause_var.set("the cause, with the body")  # type: ignore[arg-type]
        posting.event_queue_var.set("the event queue")  # type: ignore[arg-type]
        return _runner_context()

    context = contextvars.copy_context().run(in_a_handler)
    assert context[execution.cause_var] is None
    assert context[posting.event_queue_var] == "the event queue"
