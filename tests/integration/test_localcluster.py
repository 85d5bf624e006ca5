"""The local control plane itself: restarts keep data, stops leave no process behind."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from controller.localcluster import processes
from controller.localcluster.devenv import DevEnvironment

pytestmark = pytest.mark.skipif(bool(os.environ.get("AIRUN_TEST_KUBECONFIG")), reason="local control plane only")


def _pids(env: DevEnvironment) -> list[int | None]:
    return [
        processes.alive(env.cluster.run / "etcd.pid", "etcd"),
        processes.alive(env.cluster.run / "kube-apiserver.pid", "kube-apiserver"),
        processes.alive(env.cluster.run / "kube-controller-manager.pid", "kube-controller-manager"),
        processes.alive(env.operator_pid, "controller"),
    ]


def test_cold_and_warm_start_keep_data_and_leave_nothing_behind(tmp_path: Path) -> None:
    env = DevEnvironment(tmp_path / "state", fast_etcd=True, die_with_parent=True)
    try:
        cold = env.up()
        assert all(_pids(env))
        for probe in ("health", "ready"):
            with urllib.request.urlopen(env.endpoints()[probe], timeout=5) as response:
                assert response.status == 200
        assert set(env.endpoints()) == {"health", "ready", "webhook", "metrics"}
        env.kubectl("create", "namespace", "kept")
        kubeconfig = env.kubeconfig.read_text()
        env.down()
        assert _pids(env) == [None, None, None, None]

        started = time.monotonic()
        warm = env.up()
        warm_total = time.monotonic() - started
        assert env.kubectl("get", "namespace", "kept").returncode == 0
        assert env.kubeconfig.read_text() == kubeconfig, "the same ports and identities after a restart"
        # `up` again is a no-op: nothing is started twice.
        before = _pids(env)
        env.up()
        assert _pids(env) == before
        print(
            f"\ncold start: control plane {cold.control_plane:.1f} s (+manifests {cold.manifests:.1f} s, "
            f"operator {cold.operator:.1f} s); warm start: {warm_total:.1f} s "
            f"(control plane {warm.control_plane:.1f} s)"
        )
    finally:
        env.down()
    assert _pids(env) == [None, None, None, None]


def test_up_restarts_a_killed_operator(tmp_path: Path) -> None:
    env = DevEnvironment(tmp_path / "state", fast_etcd=True, die_with_parent=True)
    try:
        env.up()
        pid = _pids(env)[-1]
        assert pid
        os.kill(pid, 9)
        while processes.alive(env.operator_pid, "controller"):
            time.sleep(0.05)
        env.up()
        new = _pids(env)[-1]
        assert new and new != pid
    finally:
        env.down()


def test_a_workflow_survives_an_api_server_restart(tmp_path: Path) -> None:
    """The operator's writes fail while the API server is down; the runner retries and finishes."""
    import json

    env = DevEnvironment(tmp_path / "state", fast_etcd=True, die_with_parent=True)
    try:
        env.up()
        env.kubectl("create", "namespace", "survive")
        workflow = {
            "apiVersion": "aifirst.dev/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": "w"},
            "spec": {
                "steps": [
                    {"name": "a", "capability": "io.fs.write_file", "inputs": {"path": "a.txt", "content": "a"}},
                    {"name": "nap", "capability": "sys.sleep", "inputs": {"seconds": 3}, "dependsOn": ["a"]},
                    {
                        "name": "b",
                        "capability": "io.fs.write_file",
                        "inputs": {"path": "b.txt", "content": "b"},
                        "dependsOn": ["nap"],
                    },
                ]
            },
        }
        subprocess.run(
            [*env.kubectl_argv("bob"), "apply", "-n", "survive", "-f", "-"],
            input=json.dumps(workflow),
            text=True,
            check=True,
            capture_output=True,
        )

        def phase_of(step: str | None = None) -> str:
            out = env.kubectl("get", "wf", "w", "-n", "survive", "-o", "json", check=False)
            if out.returncode != 0:
                return ""
            status = json.loads(out.stdout).get("status", {})
            if step is None:
                return str(status.get("phase", ""))
            return next((s.get("phase", "") for s in status.get("steps", []) if s["name"] == step), "")

        deadline = time.monotonic() + 30
        while (workspace_a := (env.workspaces / "survive" / "a.txt")) and not workspace_a.exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        processes.stop(env.cluster.run / "kube-apiserver.pid", "kube-apiserver")
        time.sleep(4)  # the sleep step ends while the API server is away: its result cannot be written
        env.cluster.start()
        deadline = time.monotonic() + 90
        while phase_of() != "Succeeded":
            assert time.monotonic() < deadline, f"still {phase_of()}"
            time.sleep(0.5)
        assert (env.workspaces / "survive" / "b.txt").read_text() == "b"
    finally:
        env.down()
