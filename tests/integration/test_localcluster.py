"""The local control plane itself: restarts keep data, stops leave no process behind."""

from __future__ import annotations

import os
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
        assert _pids(env) == [None, None, None]

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
    assert _pids(env) == [None, None, None]


def test_up_restarts_a_killed_operator(tmp_path: Path) -> None:
    env = DevEnvironment(tmp_path / "state", fast_etcd=True, die_with_parent=True)
    try:
        env.up()
        pid = _pids(env)[2]
        assert pid
        os.kill(pid, 9)
        while processes.alive(env.operator_pid, "controller"):
            time.sleep(0.05)
        env.up()
        new = _pids(env)[2]
        assert new and new != pid
    finally:
        env.down()
