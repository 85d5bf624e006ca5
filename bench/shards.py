"""`make bench-shards`: the same N workflows x M side-effecting steps run by 1, 2 and 3 operator replicas
sharing the workflows through shard Leases (--shards), on a private local control plane.

Prints, for each number of replicas: throughput (steps per second between the first step's start and the last
step's end), API write requests per step (the Leases' included, from the API server's apiserver_request_total),
Lease writes per second, CPU time per step of etcd, the API server and all replicas together, and each
replica's peak RSS. On a machine with fewer cores than processes the replicas compete with the API server
for CPU: read the figures with docs/operations.md's sizing model. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.__main__ import create_all, parse, workflows, write_requests
from bench.procs import cpu_seconds_of, peak_rss_mib_of
from controller.api.workflow import TERMINAL_PHASES, WorkflowPhase
from controller.localcluster import processes
from controller.localcluster.devenv import DevEnvironment, Replica

SHARDS = 6
LEASE_SECONDS = 15.0


def control_plane_pids(env: DevEnvironment) -> dict[str, int | None]:
    return {
        "etcd": processes.alive(env.cluster.run / "etcd.pid", "etcd"),
        "kube-apiserver": processes.alive(env.cluster.run / "kube-apiserver.pid", "kube-apiserver"),
    }


def wait_spread(env: DevEnvironment, replicas: list[Replica], timeout: float = 60) -> None:
    """Until every shard is held and every replica holds some (the assignment has settled)."""
    names = {r.identity for r in replicas}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = json.loads(
            env.kubectl("get", "leases", "-n", "airun-system", "-l", "aifirst.dev/lease=shard", "-o", "json").stdout
        )["items"]
        holders = [item["spec"].get("holderIdentity") for item in listed]
        if len(holders) == SHARDS and set(holders) == names:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the shards did not settle over {sorted(names)} in {timeout:.0f} s")


def run(env: DevEnvironment, replicas: list[Replica], count: int, steps: int, namespace: str) -> dict[str, Any]:
    env.kubectl("create", "namespace", namespace)
    pids = {**control_plane_pids(env), **{r.identity: r.pid for r in replicas}}
    before = write_requests(env)
    cpu_before = {name: cpu_seconds_of(pid) for name, pid in pids.items()}
    items = workflows(count, steps, namespace, "effects")["items"]
    started = time.monotonic()
    create_all(env, items)  # by several kubectl at once, as in make bench
    while True:
        out = json.loads(env.kubectl("get", "wf", "-n", namespace, "-o", "json").stdout)["items"]
        phases = [o.get("status", {}).get("phase") for o in out]
        if all(p in TERMINAL_PHASES for p in phases):
            break
        time.sleep(1.0)
    elapsed = time.monotonic() - started
    cpu_after = {name: cpu_seconds_of(pid) for name, pid in pids.items()}
    delta = write_requests(env) - before
    first_start = min(parse(s["startedAt"]) for o in out for s in o["status"]["steps"])
    last_end = max(parse(s["finishedAt"]) for o in out for s in o["status"]["steps"])
    total = count * steps
    cpu = {name: (cpu_after[name] - cpu_before[name]) * 1000 / total for name in pids}
    operator_cpu = sum(v for k, v in cpu.items() if k not in ("etcd", "kube-apiserver"))
    creates = delta.get("POST workflows", 0)
    leases = sum(v for k, v in delta.items() if "leases" in k)
    return {
        "replicas": len(replicas),
        "succeeded": f"{phases.count(WorkflowPhase.SUCCEEDED)} of {count}",
        "steps_per_second": round(total / (last_end - first_start), 1),
        "wall_seconds": round(elapsed, 1),
        "api_writes_per_step": round((sum(delta.values()) - creates) / total, 2),
        "status_writes_per_step": round(delta.get("PATCH workflows/status", 0) / total, 2),
        "lease_writes_per_second": round(leases / elapsed, 2),
        "cpu_ms_per_step": {
            "etcd": round(cpu["etcd"], 1),
            "kube-apiserver": round(cpu["kube-apiserver"], 1),
            "operators": round(operator_cpu, 1),
        },
        "peak_rss_mib": {r.identity: peak_rss_mib_of(r.pid) for r in replicas},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=100, help="concurrent workflows (default 100)")
    parser.add_argument("--steps", type=int, default=10, help="steps per workflow, a chain (default 10)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3], help="replica counts to run")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}; {SHARDS} shards, Leases of {LEASE_SECONDS:.0f} s")
    for count in args.replicas:
        with tempfile.TemporaryDirectory(prefix="airun-bench-shards-") as tmp:
            env = DevEnvironment(Path(tmp), die_with_parent=True)
            replicas: list[Replica] = []
            try:
                env.up(operator=False)
                for n in range(count):
                    replicas.append(
                        env.start_replica(f"r{n}", shards=SHARDS, lease_seconds=LEASE_SECONDS, manage_webhooks=n == 0)
                    )
                wait_spread(env, replicas)
                result = run(env, replicas, args.workflows, args.steps, "bench-shards")
                print(
                    f"\n== {count} replica{'s' if count > 1 else ''}: {args.workflows} x {args.steps} io.fs.write_file"
                )
                for key, value in result.items():
                    print(f"  {key}: {value}")
            finally:
                for replica in replicas:
                    replica.stop()
                env.down()


if __name__ == "__main__":
    main()
