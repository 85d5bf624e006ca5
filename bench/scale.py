"""The scale part of `make bench`: the operator's memory with many workflows running at once, and how
long a restart takes with many finished workflows in the cluster. Prints figures, asserts nothing.

Finished workflows are made cheaply: with the operator stopped and its webhook configurations removed
(the operator writes them again when it starts), they are created by `kubectl create` and given the
status of a real finished workflow of the throughput run through the status subresource, so the
objects are as large as real ones and no runner ever ran for them.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from controller.api.metadata import FINISHED_LABEL
from controller.localcluster import processes
from controller.localcluster.devenv import WEBHOOK_CONFIGURATION, DevEnvironment

PARALLEL = 4  # kubectl processes creating and patching at once (the API server has 2 cores here)
BATCH = 250  # objects per kubectl process


def rss_mib(env: DevEnvironment) -> dict[str, float]:
    """The operator's current and peak resident memory (VmRSS, VmHWM)."""
    pid = processes.alive(env.operator_pid, "controller")
    figures: dict[str, float] = {}
    if pid is None:
        return figures
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            figures[key] = round(int(line.split()[1]) / 1024, 1)
    return figures


def _in_parallel(commands: Iterable[tuple[list[str], str | None]]) -> None:
    """Runs kubectl commands PARALLEL at a time (stdin: the second of each pair); any failure raises."""
    pending = list(commands)
    running: list[tuple[subprocess.Popen[str], list[str]]] = []
    while pending or running:
        while pending and len(running) < PARALLEL:
            argv, stdin = pending.pop(0)
            process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            if stdin is not None and process.stdin is not None:
                process.stdin.write(stdin)
            if process.stdin is not None:
                process.stdin.close()
            running.append((process, argv))
        process, argv = running.pop(0)
        if process.wait() != 0:
            error = process.stderr.read() if process.stderr else ""
            raise RuntimeError(f"{' '.join(argv[:6])}...: {error}")


def _manifests(names: list[str], namespace: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    metadata: dict[str, Any] = {"namespace": namespace} | ({"labels": labels} if labels else {})
    items = [
        {"apiVersion": "aifirst.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": n, **metadata}, "spec": spec}
        for n in names
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def _batches(names: list[str]) -> list[list[str]]:
    return [names[i : i + BATCH] for i in range(0, len(names), BATCH)]


def _observed(env: DevEnvironment, namespace: str) -> int:
    """How many workflows of NAMESPACE the operator has seen (its airun_workflows gauge)."""
    endpoints = json.loads(env.endpoints_file.read_text())
    with urllib.request.urlopen(endpoints["metrics"], timeout=10) as response:
        text = response.read().decode()
    seen = 0
    for line in text.splitlines():
        if line.startswith("airun_workflows{") and f'namespace="{namespace}"' in line:
            seen += int(float(line.rsplit(" ", 1)[1]))
    return seen


def restart(env: DevEnvironment, count: int, finished: dict[str, Any], namespace: str = "finished") -> dict[str, Any]:
    """COUNT finished workflows (the spec, status and labels of FINISHED, a real finished one), then a restart
    of the operator: the time until it is ready (healthy, its webhooks registered), until a workflow created
    then has succeeded, and its memory then. The operator no longer watches finished workflows (the label
    aifirst.dev/finished), so none of the COUNT is listed."""
    env.stop_operator()
    for kind in ("mutating", "validating"):
        env.kubectl("delete", f"{kind}webhookconfiguration", WEBHOOK_CONFIGURATION, "--ignore-not-found")
    env.kubectl("create", "namespace", namespace)
    names = [f"done-{i}" for i in range(count)]
    labels = {k: v for k, v in (finished["metadata"].get("labels") or {}).items() if k == FINISHED_LABEL}
    kubectl = env.kubectl_argv()
    started = time.monotonic()
    _in_parallel(
        ([*kubectl, "create", "-f", "-"], _manifests(batch, namespace, finished["spec"], labels))
        for batch in _batches(names)
    )
    status = json.dumps({"status": finished["status"]})
    _in_parallel(
        ([*kubectl, "patch", "wf", "-n", namespace, *batch, "--subresource=status", "--type=merge", "-p", status], None)
        for batch in _batches(names)
    )
    made = time.monotonic() - started
    started = time.monotonic()
    env.start_operator(timeout=300)
    ready = time.monotonic() - started
    probe = {"steps": [{"name": "s", "capability": "sys.sleep", "inputs": {"seconds": 0}}]}
    subprocess.run(
        [*kubectl, "create", "-f", "-"], input=_manifests(["after-restart"], namespace, probe), text=True, check=True
    )
    while env.kubectl("get", "wf", "after-restart", "-n", namespace, "-o", "jsonpath={.status.phase}").stdout != (
        "Succeeded"
    ):
        time.sleep(0.1)
    first = time.monotonic() - started
    return {
        "finished_workflows": count,
        "labelled_finished": bool(labels),
        "made_in_seconds": round(made, 1),
        "ready_seconds": round(ready, 2),
        "new_workflow_succeeded_after_seconds": round(first, 2),
        "workflows_watched": _observed(env, namespace),
        "operator_mib": rss_mib(env),
    }


def concurrent(env: DevEnvironment, count: int, namespace: str = "concurrent", seconds: int = 600) -> dict[str, Any]:
    """COUNT workflows at once, each waiting in a `sys.sleep` step, on a freshly started operator: its
    memory once all of them run. They are deleted afterwards (sys.sleep undoes nothing)."""
    env.stop_operator()
    env.start_operator(timeout=300)
    env.kubectl("create", "namespace", namespace)
    baseline = rss_mib(env)
    spec = {"steps": [{"name": "wait", "capability": "sys.sleep", "inputs": {"seconds": seconds}}]}
    names = [f"wait-{i}" for i in range(count)]
    started = time.monotonic()
    _in_parallel(([*env.kubectl_argv(), "create", "-f", "-"], _manifests(b, namespace, spec)) for b in _batches(names))
    created = time.monotonic() - started
    while True:
        phases = env.kubectl(
            "get", "wf", "-n", namespace, "-o", "jsonpath={range .items[*]}{.status.steps[0].phase}{'\\n'}{end}"
        ).stdout.split()
        if phases.count("Running") >= count:
            break
        time.sleep(2.0)
    running = time.monotonic() - started
    figures = rss_mib(env)
    env.kubectl("delete", "namespace", namespace, "--wait=false")
    return {
        "workflows": count,
        "created_in_seconds": round(created, 1),
        "all_running_after_seconds": round(running, 1),
        "operator_mib_idle_before": baseline.get("VmRSS"),
        "operator_mib": figures,
    }
