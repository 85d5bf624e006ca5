"""`make bench`: N workflows x M steps against a private local control plane.

Prints throughput (steps per second between the first step's start and the last step's end), per-step
overhead (p50, p95: the time from one step's end to the next one's end in a chain of no-op steps, i.e.
checkpoint + scheduling), API write requests per step (from the API server's own apiserver_request_total),
CPU time per step of each process, and the operator's peak RSS; first, the cost of one policy decision among
100 rules with CEL conditions (bench/policy_decision_cost.py); last, a restart with 10,000 finished workflows
and the memory with 1,000 workflows running at once (bench/scale.py). Asserts nothing. etcd runs with fsync
here (unlike the tests), so the figures include real disk writes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import policy_decision_cost, scale
from bench.procs import cpu_seconds_of, peak_rss_mib_of
from controller.api.workflow import TERMINAL_PHASES, WorkflowPhase
from controller.localcluster import processes
from controller.localcluster.devenv import DevEnvironment

WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE"}
CREATORS = 10  # kubectl processes creating the workflows at once


KINDS: dict[str, Any] = {
    # No side effects: their transitions ride along with the next checkpoint (docs/architecture.md).
    "pure": lambda i, j: {"capability": "sys.sleep", "inputs": {"seconds": 0}},
    # A side effect per step: a durable checkpoint before each one.
    "effects": lambda i, j: {
        "capability": "io.fs.write_file",
        "inputs": {"path": f"bench/{i}/{j}.txt", "content": "x"},
    },
}
LABELS = {"effects": "io.fs.write_file: a side effect per step", "pure": "sys.sleep 0: no side effects"}


def workflows(count: int, steps: int, namespace: str, kind: str = "pure") -> dict[str, Any]:
    items = []
    for i in range(count):
        chain = [{"name": f"s{j}", **KINDS[kind](i, j), "dependsOn": [f"s{j - 1}"] if j else []} for j in range(steps)]
        items.append(
            {
                "apiVersion": "aifirst.dev/v1alpha1",
                "kind": "Workflow",
                "metadata": {"name": f"bench-{i}", "namespace": namespace},
                "spec": {"steps": chain},
            }
        )
    return {"apiVersion": "v1", "kind": "List", "items": items}


def write_requests(env: DevEnvironment) -> Counter[str]:
    raw = env.kubectl("get", "--raw", "/metrics").stdout
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.get("verb") not in WRITE_VERBS:
            continue
        resource = labels.get("resource", "") + ("/" + labels["subresource"] if labels.get("subresource") else "")
        counts[f"{labels['verb']} {resource}"] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def parse(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def run(env: DevEnvironment, count: int, steps: int, namespace: str, kind: str = "pure") -> dict[str, Any]:
    """The COUNT workflows are created by CREATORS `kubectl create` at once, as many agents would: one
    alone sends its creates one after the other, each waiting for the admission webhooks of an operator
    busy with the first workflows' steps (100 took 12 s), so the workflows never all ran at once and the
    figure was the creation rate's."""
    env.kubectl("create", "namespace", namespace)
    before = write_requests(env)
    cpu_before = cpu_seconds(env)  # creation included: admission webhooks are part of a workflow's cost
    items = workflows(count, steps, namespace, kind)["items"]
    started = time.monotonic()
    create_all(env, items)
    applied = time.monotonic() - started
    while True:
        out = json.loads(env.kubectl("get", "wf", "-n", namespace, "-o", "json").stdout)["items"]
        phases = [o.get("status", {}).get("phase") for o in out]
        if all(p in TERMINAL_PHASES for p in phases):
            break
        time.sleep(1.0)  # listing 100 large objects costs the API server: poll gently
    elapsed = time.monotonic() - started
    cpu_after = cpu_seconds(env)
    after = write_requests(env)
    delta = after - before
    first_start = min(parse(s["startedAt"]) for o in out for s in o["status"]["steps"])
    last_end = max(parse(s["finishedAt"]) for o in out for s in o["status"]["steps"])
    gaps = []
    for o in out:
        ends = [parse(s["finishedAt"]) for s in o["status"]["steps"]]
        gaps += [(b - a) * 1000 for a, b in itertools.pairwise(ends)]
    total_steps = count * steps
    operator_writes = {k: v for k, v in delta.items() if "workflows" in k or "events" in k}
    creates = delta.get("POST workflows", 0)
    return {
        "workflows": count,
        "steps": total_steps,
        "succeeded": phases.count(WorkflowPhase.SUCCEEDED),
        "wall_seconds": round(elapsed, 2),
        "create_seconds": round(applied, 2),
        "run_seconds": round(last_end - first_start, 2),
        "steps_per_second": round(total_steps / (last_end - first_start), 1),
        "step_overhead_ms_p50": round(statistics.median(gaps), 1) if gaps else None,
        "step_overhead_ms_p95": round(statistics.quantiles(gaps, n=20)[-1], 1) if len(gaps) > 1 else None,
        "writes": dict(sorted(operator_writes.items())),
        "operator_writes_per_step": round((sum(operator_writes.values()) - creates) / total_steps, 2),
        "status_writes_per_step": round(delta.get("PATCH workflows/status", 0) / total_steps, 2),
        "cpu_ms_per_step": {
            name: round((cpu_after[name] - cpu_before.get(name, 0.0)) * 1000 / total_steps, 1) for name in cpu_after
        },
    }


def create_all(env: DevEnvironment, items: list[dict[str, Any]]) -> None:
    """ITEMS created by CREATORS `kubectl create` processes at once."""
    chunks = [items[i::CREATORS] for i in range(min(CREATORS, len(items)))]
    if not chunks:
        return
    with concurrent.futures.ThreadPoolExecutor(len(chunks)) as pool:
        list(pool.map(lambda chunk: create(env, chunk), chunks))


def create(env: DevEnvironment, items: list[dict[str, Any]]) -> None:
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    subprocess.run(
        [*env.kubectl_argv(), "create", "-f", "-"], input=manifest, text=True, check=True, capture_output=True
    )


def cpu_seconds(env: DevEnvironment) -> dict[str, float]:
    """CPU time used so far by each process of the environment (user + system)."""
    pids = {
        "etcd": processes.alive(env.cluster.run / "etcd.pid", "etcd"),
        "kube-apiserver": processes.alive(env.cluster.run / "kube-apiserver.pid", "kube-apiserver"),
        "operator": processes.alive(env.operator_pid, "controller"),
    }
    return {name: cpu_seconds_of(pid) for name, pid in pids.items() if pid is not None}


def peak_rss_mib(env: DevEnvironment) -> float | None:
    return peak_rss_mib_of(processes.alive(env.operator_pid, "controller"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=100, help="concurrent workflows (default 100)")
    parser.add_argument("--steps", type=int, default=10, help="steps per workflow, a chain (default 10)")
    parser.add_argument("--sequential", type=int, default=20, help="workflows in the one-at-a-time latency run")
    parser.add_argument(
        "--finished", type=int, default=10_000, help="finished workflows in the restart run (default 10000; 0: none)"
    )
    parser.add_argument(
        "--concurrent",
        type=int,
        default=1_000,
        help="workflows waiting at once in the memory run (default 1000; 0: none)",
    )
    args = parser.parse_args()
    policy_decision_cost.main()  # in process, before the control plane starts
    with tempfile.TemporaryDirectory(prefix="airun-bench-") as tmp:
        env = DevEnvironment(Path(tmp), die_with_parent=True)
        try:
            timing = env.up()
            print(f"control plane up in {timing.control_plane:.1f} s (etcd with fsync)")
            for kind in ("effects", "pure"):
                print(f"\n== {LABELS[kind]}")
                print(f"latency: {args.sequential} workflows of {args.steps} steps, one at a time")
                results = [run(env, 1, args.steps, f"seq-{kind}-{i}", kind) for i in range(args.sequential)]
                gaps = [r["step_overhead_ms_p50"] for r in results if r["step_overhead_ms_p50"] is not None]
                print(
                    f"  per-step overhead p50 over runs: {statistics.median(gaps):.1f} ms "
                    f"(min {min(gaps):.1f}, max {max(gaps):.1f})"
                )
                print(
                    f"  status writes per step: {results[-1]['status_writes_per_step']}, "
                    f"all operator writes per step: {results[-1]['operator_writes_per_step']}"
                )
                print(f"throughput: {args.workflows} concurrent workflows x {args.steps} steps")
                result = run(env, args.workflows, args.steps, f"throughput-{kind}", kind)
                for key, value in result.items():
                    print(f"  {key}: {value}")
            print(f"\noperator peak RSS: {peak_rss_mib(env)} MiB")
            if args.finished:
                print(f"\n== restart with {args.finished} finished workflows")
                finished = json.loads(
                    env.kubectl("get", "wf", "-n", "throughput-effects", "bench-0", "-o", "json").stdout
                )
                for key, value in scale.restart(env, args.finished, finished).items():
                    print(f"  {key}: {value}")
            if args.concurrent:
                print(f"\n== memory: {args.concurrent} workflows waiting at once (sys.sleep), a fresh operator")
                for key, value in scale.concurrent(env, args.concurrent).items():
                    print(f"  {key}: {value}")
        finally:
            env.down()


if __name__ == "__main__":
    main()
