"""Several operator replicas share the workflows through shard Leases (--shards, DESIGN section 7): three real
operator processes against the real API server. A killed replica's workflows finish on the others; a replica
paused past its Lease cannot write a status any more (fencing); replicas that join take their shards over
without anything being rolled back, and one stopped gracefully hands its shards over at once. No workflow
ever runs in two processes at once: each ledger step records the pid of the process that ran it."""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.api.workflow import TERMINAL_PHASES, WorkflowPhase
from controller.audit.store import AuditStore
from controller.engine.shards import assignment
from controller.localcluster.devenv import DevEnvironment, Replica
from tests.integration.test_chart_operator import _review, _workflow
from tests.integration.test_saga import _lines, ledger, wf
from tests.kube import Kube

OPERATOR_NAMESPACE = "airun-system"
StartReplica = Callable[..., Replica]


@pytest.fixture
def replicas(restartable: DevEnvironment, kube: Kube) -> Iterator[StartReplica]:
    """Starts replicas (the session's single operator is stopped meanwhile, and started again after)."""
    restartable.stop_operator()
    started: list[Replica] = []

    def start(identity: str, *, shards: int, lease_seconds: float = 3.0, manage_webhooks: bool = False) -> Replica:
        replica = restartable.start_replica(
            identity, shards=shards, lease_seconds=lease_seconds, manage_webhooks=manage_webhooks
        )
        started.append(replica)
        return replica

    yield start
    for replica in started:
        pid = replica.pid
        if pid:
            os.kill(pid, signal.SIGCONT)  # a paused one must be able to stop
        replica.stop()
    kube.run("delete", "leases", "-n", OPERATOR_NAMESPACE, "-l", "aifirst.dev/lease", check=False)


def shard_holders(kube: Kube) -> dict[int, str | None]:
    listed = json.loads(
        kube.run("get", "leases", "-n", OPERATOR_NAMESPACE, "-l", "aifirst.dev/lease=shard", "-o", "json").stdout
    )
    return {
        int(item["metadata"]["name"].rsplit("-", 1)[1]): item["spec"].get("holderIdentity") for item in listed["items"]
    }


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {timeout} s")


def wait_spread(kube: Kube, shards: int, replicas: list[str], timeout: float = 40) -> None:
    """Until the shards are held as every replica computes it (controller.engine.shards.assignment)."""
    wanted = assignment(shards, replicas)
    try:
        wait_until(lambda: shard_holders(kube) == wanted, timeout, f"shards held as {wanted}")
    except AssertionError as error:
        raise AssertionError(f"{error}; held: {shard_holders(kube)}") from None


def workflows(kube: Kube, namespace: str) -> dict[str, dict[str, Any]]:
    listed = json.loads(kube.run("get", "wf", "-n", namespace, "-o", "json").stdout)
    return {item["metadata"]["name"]: item for item in listed["items"]}


def create(kube: Kube, namespace: str, names: list[str], steps: int, capability: str, seconds: float) -> None:
    documents = []
    for name in names:
        chain = [ledger(f"s{i}", capability, seconds, (f"s{i - 1}",) if i else (), book=name) for i in range(steps)]
        documents.append(wf(name, *chain))
    kube.apply(yaml.safe_dump_all(documents), namespace=namespace, as_="bob")


def all_terminal(kube: Kube, namespace: str, count: int, timeout: float) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    def done() -> bool:
        nonlocal found
        found = workflows(kube, namespace)
        phases = [o.get("status", {}).get("phase") for o in found.values()]
        return len(found) == count and all(p in TERMINAL_PHASES for p in phases)

    wait_until(done, timeout, f"{count} finished workflows")
    return found


def pids(workspace: Path, name: str) -> list[int]:
    """The processes that started each step attempt of workflow NAME, in order."""
    return [int(line.split()[2]) for line in _lines(workspace / "ledgers" / f"{name}.starts")]


def never_back(sequence: list[int]) -> bool:
    """Whether a workflow that moved from one process to another never went back: the processes
    that ran its attempts form runs (A A B B), never A B A."""
    runs = [p for i, p in enumerate(sequence) if i == 0 or sequence[i - 1] != p]
    return len(runs) == len(set(runs))


def test_a_killed_replicas_workflows_finish_on_the_others_and_none_runs_on_two_at_once(
    kube: Kube, namespace: str, restartable: DevEnvironment, replicas: StartReplica
) -> None:
    first = replicas("r0", shards=6, manage_webhooks=True)
    victim = replicas("r1", shards=6)
    third = replicas("r2", shards=6)
    wait_spread(kube, 6, ["r0", "r1", "r2"])
    workspace = restartable.workspaces / namespace
    names = [f"w{i:02d}" for i in range(30)]
    create(kube, namespace, names, steps=3, capability="test.ledger.record", seconds=1.0)
    victim_pid = victim.pid
    assert victim_pid
    wait_until(lambda: any(victim_pid in pids(workspace, n) for n in names), 30, "a step run by r1")
    os.kill(victim_pid, signal.SIGKILL)

    found = all_terminal(kube, namespace, len(names), timeout=120)
    survivors = {first.pid, third.pid}
    # r1's workflows: those it was running at the kill went on elsewhere; one it had finished before (a busy
    # machine is slow to notice its first step) stays finished. The checks below hold for all of them.
    moved = [n for n in names if victim_pid in pids(workspace, n) and pids(workspace, n)[-1] in survivors]
    assert moved, "no workflow of r1 finished on another replica: the test did not test a takeover"
    for name, obj in found.items():
        assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, (name, obj["status"])
        # each step took effect once (a step in flight at the kill ran again with its key: idempotent)
        assert sorted(line.split()[1] for line in _lines(workspace / "ledgers" / f"{name}.log")) == ["s0", "s1", "s2"]
        assert never_back(pids(workspace, name)), (name, pids(workspace, name))
    assert "r1" not in shard_holders(kube).values()
    assert AuditStore(restartable.audit_url).verify() == []  # three processes appended to one chain


def test_a_replica_paused_past_its_lease_cannot_write_status(
    kube: Kube, namespace: str, restartable: DevEnvironment, replicas: StartReplica
) -> None:
    replicas("r0", shards=2, manage_webhooks=True)
    paused = replicas("r1", shards=2)
    wait_spread(kube, 2, ["r0", "r1"])
    workspace = restartable.workspaces / namespace
    names = [f"p{i}" for i in range(6)]
    create(kube, namespace, names, steps=2, capability="test.ledger.record", seconds=4.0)
    paused_pid = paused.pid
    assert paused_pid
    wait_until(lambda: any(paused_pid in pids(workspace, n) for n in names), 20, "a step run by r1")
    theirs = [n for n in names if paused_pid in pids(workspace, n)]
    os.kill(paused_pid, signal.SIGSTOP)  # mid-step: it holds its shard's Lease, and will not renew it

    all_terminal(kube, namespace, len(names), timeout=60)  # r0 took the shard over and finished
    assert set(shard_holders(kube).values()) == {"r0"}
    wait_until(
        lambda: not any(o["metadata"].get("finalizers") for o in workflows(kube, namespace).values()),
        20,
        "the finalizers removed",
    )
    versions = {n: o["metadata"]["resourceVersion"] for n, o in workflows(kube, namespace).items()}
    os.kill(paused_pid, signal.SIGCONT)  # it wakes up mid-step, its Lease long gone
    wait_until(lambda: "lost" in paused.log_file.read_text(), 20, "r1 noticing that it lost its shard")
    time.sleep(3)

    after = workflows(kube, namespace)
    for name in names:
        assert after[name]["status"]["phase"] == WorkflowPhase.SUCCEEDED, (name, after[name]["status"])
        steps = {s["name"]: s["phase"] for s in after[name]["status"]["steps"]}
        assert steps == {"s0": "Succeeded", "s1": "Succeeded"}, (name, steps)
        # r1's wake-up wrote nothing: not its stale status, not even a finalizer
        assert after[name]["metadata"]["resourceVersion"] == versions[name], name
    for name in theirs:
        assert never_back(pids(workspace, name)), (name, pids(workspace, name))
        assert pids(workspace, name).count(paused_pid) == 1  # nothing new started in r1 after it woke


def test_replicas_that_join_or_leave_hand_shards_over_without_rolling_anything_back(
    kube: Kube, namespace: str, restartable: DevEnvironment, replicas: StartReplica
) -> None:
    """Not idempotent steps (test.ledger.append): a step cut off by a handover would end in doubt and be
    compensated. Handovers let the running steps finish first: every step runs exactly once."""
    replicas("r0", shards=4, manage_webhooks=True)
    wait_spread(kube, 4, ["r0"])
    workspace = restartable.workspaces / namespace
    names = [f"j{i:02d}" for i in range(12)]
    create(kube, namespace, names, steps=6, capability="test.ledger.append", seconds=1.5)
    joining = replicas("r1", shards=4)
    replicas("r2", shards=4)
    wait_spread(kube, 4, ["r0", "r1", "r2"], timeout=60)
    # A graceful stop (SIGTERM) frees r1's shard at once: taken over well within a lease duration.
    began = time.monotonic()
    assert joining.stop()
    wait_until(
        lambda: "r1" not in shard_holders(kube).values() and None not in shard_holders(kube).values(),
        10,
        "r1's shard taken over",
    )
    handed_over = time.monotonic() - began

    found = all_terminal(kube, namespace, len(names), timeout=120)
    for name, obj in found.items():
        assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, (name, obj["status"])
        assert len(_lines(workspace / "ledgers" / f"{name}.starts")) == 6, name  # each step once, none in doubt
        assert never_back(pids(workspace, name)), (name, pids(workspace, name))
    moved = [n for n in names if len(set(pids(workspace, n))) > 1]
    assert moved, "no workflow changed replica: the test did not test a handover"
    print(f"\nr1 stopped and its shard was taken over in {handed_over:.1f} s")


def test_every_replica_serves_the_webhooks(kube: Kube, restartable: DevEnvironment, replicas: StartReplica) -> None:
    """The webhook configurations point at one replica here (at the Service in a cluster); each replica
    answers them: the same refusal from the ones that do not manage the configurations."""
    replicas("r0", shards=2, manage_webhooks=True)
    others = [replicas("r1", shards=2), replicas("r2", shards=2)]
    config = json.loads(kube.run("get", "validatingwebhookconfiguration", "airun.aifirst.dev", "-o", "json").stdout)
    url = next(w["clientConfig"]["url"] for w in config["webhooks"] if w["name"].startswith("workflow-runnable."))
    path = "/" + url.split("/", 3)[3]
    review = _review("workflows", "Workflow", "CREATE", "bob", _workflow("no.such.cap"))
    context = ssl.create_default_context(cafile=str(restartable.cluster.pki.ca_cert))
    for replica in others:
        with httpx.Client(verify=context, timeout=30) as http:
            reply = http.post(replica.endpoints["webhook"] + path, json=review)
        assert reply.status_code == 200, reply.text
        response = reply.json()["response"]
        assert not response["allowed"] and "no.such.cap" in response["status"]["message"], (replica.identity, response)


def test_a_replica_with_another_number_of_shards_takes_none(kube: Kube, replicas: StartReplica) -> None:
    """A rollout that changed --shards without scaling to 0: the shards would mean different things to the
    two replicas, so that a workflow could be run by both. The newcomer takes nothing until the other is gone."""
    replicas("r0", shards=2, manage_webhooks=True)
    wait_spread(kube, 2, ["r0"])
    other = replicas("r1", shards=3)
    wait_until(lambda: "other numbers of shards" in other.log_file.read_text(), 20, "r1 refusing the shards")
    time.sleep(3)
    assert set(shard_holders(kube).values()) == {"r0"}
