"""`make bench-faults`: issue 14's fault run. N workflows of M idempotent `net.http.request` POSTs to a
loopback API that honours `Idempotency-Key` (it answers a new key after a delay, a repeat at once), while
the operator is SIGKILLed K times at random moments and started again each time (with --replicas R, a
random one of R shard replicas is killed and started again; the others take its shards over). With
--control-plane-kills C, C more kills hit the API server or etcd instead (SIGKILL, down for --outage
seconds, started again), at random moments among the operator's.

The workflows are created one by one across the run, so that kills land before, during and after their
steps; a create refused while no operator serves the admission webhooks (they fail closed) is tried again,
as an agent would. Then it counts, from the remote API's own record of every request:

- lost: a workflow not finished at the end, or one that Succeeded although a step of it made no item;
- doubled: more than one item made for one step (a repeat sent with another key);
- orphaned: an item still there whose workflow did not succeed (its rollback left it behind);
- and how many workflows Succeeded, and how many POSTs were sent again with their key after a crash.

A benchmark of the guarantees: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from controller.api.workflow import TERMINAL_PHASES, WorkflowPhase
from controller.localcluster import processes
from controller.localcluster.devenv import DevEnvironment, Replica
from tests.httpserver import LoopbackAPI

NAMESPACE = "faults"
LEASE_SECONDS = 5.0  # with --replicas: how long a killed replica's shards wait for their next holder


def workflow(api: LoopbackAPI, index: int, steps: int) -> dict[str, Any]:
    chain = []
    for j in range(steps):
        chain.append(
            {
                "name": f"post{j}",
                "capability": "net.http.request",
                "idempotent": True,
                "dependsOn": [f"post{j - 1}"] if j else [],
                "inputs": {
                    "method": "POST",
                    "url": f"{api.url}/keyed-items",
                    "json": {"workflow": f"faults-{index}", "step": f"post{j}"},
                },
                "compensation": {
                    "capability": "net.http.request",
                    "inputs": {"method": "DELETE", "url": "{{ outputs.json.url }}", "okStatus": [404]},
                },
            }
        )
    return {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": f"faults-{index}", "namespace": NAMESPACE},
        "spec": {"steps": chain},
    }


class Operators:
    """The operator process(es) under test: one, or R shard replicas."""

    def __init__(self, env: DevEnvironment, replicas: int) -> None:
        self.env = env
        self.count = replicas
        self.replicas: list[Replica] = []

    def start(self) -> None:
        if self.count == 1:
            self.env.start_operator()
            return
        for i in range(self.count):
            self.replicas.append(self._start(i))

    def _start(self, i: int) -> Replica:
        return self.env.start_replica(
            f"r{i}", shards=2 * self.count, lease_seconds=LEASE_SECONDS, manage_webhooks=i == 0
        )

    def kill_one(self, rng: random.Random) -> str:
        """SIGKILLs one process and starts it again (waiting until it is ready); returns which."""
        if self.count == 1:
            pid_file, name = self.env.operator_pid, "operator"
        else:
            i = rng.randrange(self.count)
            pid_file, name = self.replicas[i].pid_file, self.replicas[i].identity
        processes.kill(pid_file, "controller")
        if self.count == 1:
            self.env.start_operator()
        else:
            self.replicas[i] = self._start(i)
        return name

    def kill_control_plane(self, rng: random.Random, outage: float) -> str:
        """SIGKILLs the API server or etcd, waits OUTAGE seconds, starts it again; returns which."""
        name = rng.choice(("kube-apiserver", "etcd"))
        processes.kill(self.env.cluster.run / f"{name}.pid", name)
        time.sleep(outage)
        self.env.cluster.start()
        return name

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        self.env.stop_operator()


def create_spread(env: DevEnvironment, items: list[dict[str, Any]], over: float, refused: Counter[str]) -> None:
    """Creates ITEMS one by one across OVER seconds; a create refused (no webhook answering) is retried."""
    started = time.monotonic()
    for i, item in enumerate(items):
        time.sleep(max(0.0, i * over / len(items) - (time.monotonic() - started)))
        while True:
            result = subprocess.run(
                [*env.kubectl_argv(), "create", "-f", "-"], input=json.dumps(item), text=True, capture_output=True
            )
            if result.returncode == 0 or "AlreadyExists" in result.stderr:
                break
            refused["create refused, tried again"] += 1
            time.sleep(0.5)


def by_name(env: DevEnvironment) -> dict[str, dict[str, Any]]:
    listed = json.loads(env.kubectl("get", "wf", "-n", NAMESPACE, "-o", "json").stdout)["items"]
    return {o["metadata"]["name"]: o for o in listed}


def count(api: LoopbackAPI, objects: dict[str, dict[str, Any]], expected: list[str], steps: int) -> dict[str, Any]:
    made: Counter[tuple[str, str]] = Counter()  # items the API made, per (workflow, step)
    seen_keys: set[str] = set()
    repeats = 0
    for method, path, headers, body in list(api.requests):
        if method != "POST" or path != "/keyed-items":
            continue
        key = headers.get("Idempotency-Key", "")
        if key in seen_keys:
            repeats += 1  # sent again after a crash: answered with the first item
            continue
        seen_keys.add(key)
        sent = json.loads(body or b"{}")
        made[(sent.get("workflow", ""), sent.get("step", ""))] += 1
    remaining: Counter[str] = Counter(item.get("workflow", "") for item in api.items.values())
    outcome: Counter[str] = Counter()
    reasons: Counter[str] = Counter()  # the Ready condition's reason: Succeeded, InDoubt, StepFailed...
    lost, doubled, orphaned = [], [], []
    for name in expected:
        obj = objects.get(name)
        phase = ((obj or {}).get("status") or {}).get("phase")
        outcome[phase or "missing"] += 1
        if phase not in TERMINAL_PHASES:
            lost.append(name)
            continue
        step_made = [made[(name, f"post{j}")] for j in range(steps)]
        if any(n > 1 for n in step_made):
            doubled.append(name)
        if phase == WorkflowPhase.SUCCEEDED and any(n == 0 for n in step_made):
            lost.append(name)
        if phase != WorkflowPhase.SUCCEEDED and remaining[name]:
            orphaned.append(name)
        conditions = ((obj or {}).get("status") or {}).get("conditions") or []
        reasons[next((c.get("reason") for c in conditions if c.get("type") == "Ready"), "none")] += 1
    return {
        "workflows": len(expected),
        "succeeded": outcome[WorkflowPhase.SUCCEEDED],
        "succeeded_percent": round(100 * outcome[WorkflowPhase.SUCCEEDED] / len(expected), 1),
        "phases": dict(outcome),
        "reasons": dict(reasons),
        "lost": lost,
        "doubled": doubled,
        "orphaned": orphaned,
        "posts_sent_again_with_their_key": repeats,
        "requests": len(api.requests),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=50)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--control-plane-kills", type=int, default=0, help="kills of the API server or etcd")
    parser.add_argument("--outage", type=float, default=0.0, help="seconds the API server or etcd stays down")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds the API takes to answer a new key")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the last workflow")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print(
        f"{args.workflows} workflows x {args.steps} idempotent POSTs, {args.kills} SIGKILLs of the operator"
        f" and {args.control_plane_kills} of the control plane, seed {seed}"
    )
    api = LoopbackAPI()
    api.delay = args.delay
    with tempfile.TemporaryDirectory(prefix="airun-faults-") as tmp:
        env = DevEnvironment(Path(tmp), die_with_parent=True)
        operators = Operators(env, args.replicas)
        try:
            env.up(operator=False)
            operators.start()
            env.kubectl("create", "namespace", NAMESPACE)
            items = [workflow(api, i, args.steps) for i in range(args.workflows)]
            refused: Counter[str] = Counter()
            targets = ["operator"] * args.kills + ["control plane"] * args.control_plane_kills
            rng.shuffle(targets)
            window = len(targets) * 2.5
            creator = threading.Thread(target=create_spread, args=(env, items, window * 0.8, refused), daemon=True)
            creator.start()
            killed: Counter[str] = Counter()
            for target in targets:
                time.sleep(rng.uniform(0.2, 2.5))
                if target == "operator":
                    killed[operators.kill_one(rng)] += 1
                else:
                    killed[operators.kill_control_plane(rng, args.outage)] += 1
            creator.join()
            print(f"  killed: {dict(killed)}; {dict(refused) or 'no create refused'}")
            expected = [item["metadata"]["name"] for item in items]
            deadline = time.monotonic() + args.timeout
            while True:
                objects = by_name(env)
                done = all((objects.get(n, {}).get("status") or {}).get("phase") in TERMINAL_PHASES for n in expected)
                if done or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            time.sleep(2.0)  # the last rollbacks' DELETEs
            for key, value in count(api, by_name(env), expected, args.steps).items():
                print(f"  {key}: {value}")
        finally:
            operators.stop()
            env.down()
            api.close()


if __name__ == "__main__":
    main()
