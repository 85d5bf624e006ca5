"""Fixtures shared by the whole suite.

Integration tests share one private local control plane per session (start-up costs seconds) and
isolate themselves by namespace. Set AIRUN_TEST_KUBECONFIG to run them against another cluster instead
(for example kind); its current context must be a cluster admin.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.httpserver import LoopbackAPI
from tests.kube import Kube

if TYPE_CHECKING:
    from controller.localcluster.devenv import DevEnvironment

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("airun")


@pytest.fixture(scope="session")
def devenv(state_dir: Path) -> Iterator[object]:
    """The private local control plane with the manifests installed (no operator: see `operator`)."""
    from controller.localcluster.devenv import DevEnvironment

    if os.environ.get("AIRUN_TEST_KUBECONFIG"):
        yield None
        return
    env = DevEnvironment(state_dir, fast_etcd=True, die_with_parent=True)
    timing = env.up(operator=False)
    print(f"\nlocal control plane: {timing.control_plane:.1f} s, manifests {timing.manifests:.1f} s")
    try:
        yield env
    finally:
        env.down()


@pytest.fixture(scope="session")
def kube(devenv: object) -> Kube:
    from controller.localcluster.binaries import find_binaries

    external = os.environ.get("AIRUN_TEST_KUBECONFIG")
    if external:
        kubectl = Path(shutil.which("kubectl") or find_binaries() / "kubectl")
        k = Kube(kubectl, Path(external), local=False)
        if os.environ.get("AIRUN_TEST_RELEASE"):
            # The chart installed the CRDs, the roles and the operator's bindings: what is tested is exactly
            # what it installed. Only the test users' bindings are added (bob, approvers, agents/planner).
            documents = yaml.safe_load_all((REPO / "rbac" / "local-bindings.yaml").read_text())
            users = [d for d in documents if d and "airun-operator" not in yaml.safe_dump(d)]
            k.run("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(users))
            return k
        for path in (REPO / "crds", REPO / "rbac" / "roles.yaml", REPO / "rbac" / "local-bindings.yaml"):
            k.run("apply", "--server-side", "--force-conflicts", "-f", str(path))
        k.run("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
        return k
    from controller.localcluster.devenv import DevEnvironment

    assert isinstance(devenv, DevEnvironment)
    return Kube(find_binaries() / "kubectl", devenv.kubeconfig, local=True)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (not waited for: the namespace controller finishes it,
    and a workflow still running there is compensated first, as on any cluster)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.create_namespace(name)
    yield name
    kube.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def operator(devenv: object, kube: Kube) -> Iterator[object]:
    """The operator, as in production: its own process, its own identity (context `operator`)."""
    from controller.localcluster.devenv import DevEnvironment

    if not isinstance(devenv, DevEnvironment):
        pytest.skip("the operator fixture runs on the local control plane only")
    devenv.start_operator()
    try:
        yield devenv
    finally:
        devenv.stop_operator()


@pytest.fixture
def env(operator: DevEnvironment) -> DevEnvironment:
    """The session's local environment, its operator running: for what runs as a user does (airun, MCP)."""
    return operator


# One namespace Policy for the calls of the front doors' tests (airun execute, MCP): deletions need an
# approver, moves are denied, the rest runs.
GUARDS: dict[str, Any] = {
    "apiVersion": "aifirst.dev/v1alpha1",
    "kind": "Policy",
    "metadata": {"name": "guards"},
    "spec": {
        "default": "ALLOW",
        "rules": [
            {"capabilities": ["io.fs.delete"], "action": "REQUIRE_APPROVAL", "approvers": {"groups": ["approvers"]}},
            {"capabilities": ["io.fs.move"], "action": "DENY"},
        ],
    },
}


@pytest.fixture
def guarded(kube: Kube, namespace: str) -> str:
    """NAMESPACE with the GUARDS policy, where the `agent` context may author too (a second principal beside
    bob)."""
    kube.apply(GUARDS, namespace=namespace)
    kube.let_the_agent_author(namespace)
    time.sleep(0.5)  # the operator's policy index follows the watch
    return namespace


@pytest.fixture
def restartable(operator: object) -> Iterator[object]:
    """The session's operator, for a test that stops or kills it: started again afterwards, whatever the
    test did, so that the next test has one."""
    yield operator
    operator.start_operator()  # type: ignore[attr-defined]


@pytest.fixture
def api() -> Iterator[LoopbackAPI]:
    """A real HTTP API on loopback (tests/httpserver.py), closed after the test."""
    server = LoopbackAPI()
    yield server
    server.close()
