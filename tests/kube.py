"""Test access to a real API server: kubectl under the local identities, and a typed client."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controller.localcluster.pki import IDENTITIES

_BY_CONTEXT = {i.context: i for i in IDENTITIES}


@dataclass
class Kube:
    """KUBECTL talks to the cluster of KUBECONFIG. On the local control plane every identity has its own
    context; on another cluster (AIRUN_TEST_KUBECONFIG, e.g. kind) the admin impersonates them."""

    kubectl_binary: Path
    kubeconfig: Path
    local: bool
    extra_env: dict[str, str] = field(default_factory=dict)

    def argv(self, *args: str, as_: str = "admin") -> list[str]:
        argv = [str(self.kubectl_binary), f"--kubeconfig={self.kubeconfig}"]
        if self.local:
            argv.append(f"--context={as_}")
        elif as_ != "admin":
            identity = _BY_CONTEXT[as_]
            argv.append(f"--as={identity.user}")
            argv += [f"--as-group={g}" for g in identity.groups]
        return argv + list(args)

    def run(
        self, *args: str, as_: str = "admin", stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(*args, as_=as_), input=stdin, capture_output=True, text=True, check=False, timeout=120
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} as {as_} failed: {result.stderr}")
        return result

    def apply(
        self,
        manifest: dict[str, Any] | str,
        *,
        as_: str = "admin",
        namespace: str | None = None,
        check: bool = True,
        dry_run: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        args = ["apply", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        if dry_run:
            args.append("--dry-run=server")
        return self.run(*args, as_=as_, stdin=text, check=check)

    def get(self, kind: str, name: str, namespace: str | None = None, *, as_: str = "admin") -> dict[str, Any]:
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        result: dict[str, Any] = json.loads(self.run(*args, as_=as_).stdout)
        return result

    def wait_for(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 60.0,
        what: str = "condition",
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = self.get(kind, name, namespace)
            if predicate(obj):
                return obj
            time.sleep(0.2)
        raise AssertionError(f"{kind}/{name}: no {what} after {timeout} s; last: {json.dumps(obj)[:2000]}")

    def events_of(
        self, name: str, namespace: str, *, field: str = "reason", contains: str = "", timeout: float = 20.0
    ) -> str:
        """The FIELD of the events about object NAME, space-separated; waits until CONTAINS is among them."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.run(
                "get",
                "events",
                "-n",
                namespace,
                "--field-selector",
                f"involvedObject.name={name}",
                "-o",
                f"jsonpath={{.items[*].{field}}}",
            ).stdout
            if contains in text or time.monotonic() >= deadline:
                return text
            time.sleep(0.3)

    def let_the_agent_author(self, namespace: str) -> None:
        """Binds airun-author to the `agent` context's identity (ServiceAccount agents/planner) in NAMESPACE:
        a second principal beside bob."""
        self.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "planner-author"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "airun-author"},
                "subjects": [{"kind": "ServiceAccount", "name": "planner", "namespace": "agents"}],
            },
            namespace=namespace,
        )

    def create_namespace(self, name: str) -> str:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return name
