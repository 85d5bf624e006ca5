"""A graceful stop (SIGTERM, as a rolling restart sends it) in the middle of a slow step that is not
idempotent: the operator starts nothing new, lets the step finish, checkpoints it and exits; the next
operator goes on from there. Nothing is rolled back, nothing runs twice. (After SIGKILL the same step
is in doubt and the workflow is compensated: tests/integration/test_saga.py.)"""

from __future__ import annotations

import os
import signal
import time

from controller.localcluster import processes
from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_saga import _lines, ledger, steps_of, wait_terminal, wf, write
from tests.kube import Kube


def test_sigterm_in_the_middle_of_a_slow_step_lets_it_finish_and_rolls_nothing_back(
    kube: Kube, namespace: str, restartable: DevEnvironment
) -> None:
    workspace = restartable.workspaces / namespace
    kube.apply(
        wf(
            "rolling",
            write("before", "before.txt"),
            ledger("slow", "test.ledger.append", 3, ("before",)),
            write("after", "after.txt", ("slow",)),
        ),
        namespace=namespace,
        as_="bob",
    )
    starts = workspace / "ledgers" / "book.starts"
    kube.wait_for("wf", "rolling", namespace, lambda o: bool(_lines(starts)), what="the slow step started")
    began = time.monotonic()
    assert restartable.stop_operator()  # SIGTERM, and SIGKILL only after 10 s
    stopped_after = time.monotonic() - began
    assert stopped_after < 10, f"the operator took {stopped_after:.1f} s to stop"

    # Checkpointed on the way out: the slow step's result, and nothing new started.
    s = steps_of(kube.get("wf", "rolling", namespace))
    assert s["slow"]["phase"] == "Succeeded", s
    assert s["after"].get("phase", "Pending") == "Pending", s
    assert not (workspace / "after.txt").exists()

    restartable.start_operator()
    obj = wait_terminal(kube, namespace, "rolling")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert len(_lines(starts)) == 1  # never run twice
    assert len(_lines(workspace / "ledgers" / "book.log")) == 1
    assert (workspace / "after.txt").read_text() == "after"


def test_a_second_signal_stops_at_once(kube: Kube, namespace: str, restartable: DevEnvironment) -> None:
    kube.apply(wf("long", ledger("slow", "test.ledger.record", 30)), namespace=namespace, as_="bob")
    starts = restartable.workspaces / namespace / "ledgers" / "book.starts"
    kube.wait_for("wf", "long", namespace, lambda o: bool(_lines(starts)), what="the slow step started")
    pid = processes.alive(restartable.operator_pid, "controller")
    assert pid
    began = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.5)
    os.kill(pid, signal.SIGTERM)
    while processes.alive(restartable.operator_pid, "controller") and time.monotonic() - began < 15:
        time.sleep(0.05)
    assert time.monotonic() - began < 8, "the second signal did not stop the operator"
    restartable.start_operator()
    obj = wait_terminal(kube, namespace, "long", timeout=90)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]  # an idempotent step runs again
