"""The local environment of `make up` / `airun up`: the control plane, the manifests, the operator.

Everything lives in one state directory (`.airun/` of the checkout); see docs/architecture.md, "The local environment".
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from controller.localcluster import processes
from controller.localcluster.binaries import REPO_ROOT, find_binaries
from controller.localcluster.cluster import LocalCluster, StartError, free_port, port_free

CRD_DIR = REPO_ROOT / "crds"
MANIFESTS = (REPO_ROOT / "rbac" / "roles.yaml", REPO_ROOT / "rbac" / "local-bindings.yaml")
BASELINE_POLICIES = REPO_ROOT / "policies" / "baseline.yaml"
WEBHOOK_CONFIGURATION = "airun.aifirst.dev"


@dataclass
class Replica:
    """An operator replica started by DevEnvironment.start_replica (its pid file, log and endpoints)."""

    identity: str
    pid_file: Path
    log_file: Path
    endpoints: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return processes.alive(self.pid_file, "controller")

    def stop(self) -> bool:
        """SIGTERM (a graceful stop), SIGKILL after 10 s."""
        return processes.stop(self.pid_file, "controller")


@dataclass
class Timing:
    control_plane: float
    manifests: float
    operator: float


class DevEnvironment:
    def __init__(self, state_dir: Path, *, fast_etcd: bool = False, die_with_parent: bool = False) -> None:
        self.dir = state_dir.resolve()
        self.cluster = LocalCluster(self.dir, fast_etcd=fast_etcd, die_with_parent=die_with_parent)
        self.die_with_parent = die_with_parent
        self.endpoints_file = self.dir / "endpoints.json"
        self.operator_pid = self.dir / "operator.pid"
        self.workspaces = self.dir / "workspaces"

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    def kubectl_argv(self, context: str = "admin") -> list[str]:
        return [str(find_binaries() / "kubectl"), f"--kubeconfig={self.kubeconfig}", f"--context={context}"]

    def kubectl(self, *args: str, context: str = "admin", check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [*self.kubectl_argv(context), *args]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise StartError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    # -- up ------------------------------------------------------------------------------------------

    def up(self, *, operator: bool = True) -> Timing:
        control_plane = self.cluster.start()
        started = time.monotonic()
        self.install_manifests()
        manifests = time.monotonic() - started
        started = time.monotonic()
        if operator:
            self.start_operator()
        return Timing(control_plane, manifests, time.monotonic() - started)

    def install_manifests(self) -> None:
        # Server-side apply: idempotent, and a changed CRD in the checkout is applied on the next `up`.
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRD_DIR))
        args = ["apply", "--server-side", "--force-conflicts"]
        for manifest in MANIFESTS:
            args += ["-f", str(manifest)]
        if BASELINE_POLICIES.exists():
            args += ["-f", str(BASELINE_POLICIES)]
        self.kubectl(*args)

    @property
    def audit_url(self) -> str:
        return f"sqlite:///{self.dir / 'audit.db'}"

    def _key(self, name: str) -> Path:
        """A random key under the state directory, made once and kept across restarts."""
        path = self.dir / name
        if not path.exists():
            path.write_text(secrets.token_hex(32) + "\n")
            path.chmod(0o600)
        return path

    def notify_secret(self) -> Path:
        """The key that signs approval notifications."""
        return self._key("notify-secret")

    def attestation_key(self) -> Path:
        """The key with which the admission webhook signs principals."""
        return self._key("attestation-key")

    def snapshot_key(self) -> Path:
        """The key that seals Secret snapshots (kept: older snapshots stay readable)."""
        return self._key("snapshot-key")

    def endpoints(self) -> dict[str, str]:
        if not self.endpoints_file.exists():
            return {}
        data: dict[str, str] = json.loads(self.endpoints_file.read_text())
        return data

    def operator_running(self) -> bool:
        return processes.alive(self.operator_pid, "controller") is not None

    def start_operator(self, timeout: float = 60.0, context: str = "operator") -> None:
        """Starts the operator as CONTEXT of the kubeconfig (its own least-privilege identity by default)."""
        if self.operator_running():
            return
        ports = self._operator_ports(self.endpoints())
        endpoints = self._start_process(ports, self.operator_pid, "operator.log", context, [])
        self.endpoints_file.write_text(json.dumps(endpoints, indent=2) + "\n")
        self._wait_healthy(endpoints["ready"], timeout, self.operator_pid)
        self._wait_webhooks(ports["webhook"], timeout)

    def start_replica(
        self, identity: str, *, shards: int, lease_seconds: float, manage_webhooks: bool, timeout: float = 60.0
    ) -> Replica:
        """One of several operator replicas sharing the workflows through shard Leases (--shards): the one
        with MANAGE_WEBHOOKS points the webhook configurations at itself, the others only serve them."""
        replica = Replica(
            identity, self.dir / f"operator-{identity}.pid", self.dir / "logs" / f"operator-{identity}.log"
        )
        ports = self._operator_ports({})
        extra = [f"--shards={shards}", f"--identity={identity}", f"--lease-seconds={lease_seconds}"]
        if not manage_webhooks:
            extra.append("--no-webhook-managed")
        replica.endpoints = self._start_process(ports, replica.pid_file, replica.log_file.name, "operator", extra)
        self._wait_healthy(replica.endpoints["ready"], timeout, replica.pid_file)
        if manage_webhooks:
            self._wait_webhooks(ports["webhook"], timeout)
        return replica

    def _start_process(
        self, ports: dict[str, int], pid_file: Path, log_name: str, context: str, extra: list[str]
    ) -> dict[str, str]:
        self.workspaces.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["AIRUN_STATE_DIR"] = str(self.dir)
        env["AIRUN_WORKSPACES"] = str(self.workspaces)
        env.setdefault("AIRUN_TEST_CAPABILITIES", "1")  # the demo and the tests use the test.* family
        # Locally, requests may go to loopback, never to the control plane or the operator itself.
        env["AIRUN_EGRESS_ALLOW_LOOPBACK"] = "1"
        cluster_ports = self.cluster.ports
        own = [cluster_ports.apiserver, cluster_ports.etcd_client, cluster_ports.etcd_peer, *ports.values()]
        env["AIRUN_EGRESS_FORBIDDEN"] = ",".join(f"127.0.0.1:{p},[::1]:{p}" for p in own)
        pki = self.cluster.pki
        argv = [
            sys.executable,
            "-m",
            "controller",
            f"--kubeconfig={self.kubeconfig}",
            f"--context={context}",
            *(["--verbose"] if os.environ.get("AIRUN_OPERATOR_VERBOSE") else []),
            f"--health-port={ports['health']}",
            f"--webhook-port={ports['webhook']}",
            f"--webhook-cert={pki.webhook_cert}",
            f"--webhook-key={pki.webhook_key}",
            f"--webhook-ca={pki.ca_cert}",
            f"--notify-secret-file={self.notify_secret()}",
            f"--attestation-key-file={self.attestation_key()}",
            f"--snapshot-key-file={self.snapshot_key()}",
            f"--metrics-port={ports['metrics']}",
            f"--audit-url={self.audit_url}",
            *extra,
        ]
        processes.start(
            argv,
            pid_file=pid_file,
            log_file=self.dir / "logs" / log_name,
            env=env,
            die_with_parent=self.die_with_parent,
            cwd=self.dir,
        )
        return {
            "health": f"http://127.0.0.1:{ports['health']}/healthz",
            "ready": f"http://127.0.0.1:{ports['health']}/readyz",
            "webhook": f"https://127.0.0.1:{ports['webhook']}",
            "metrics": f"http://127.0.0.1:{ports['metrics']}/metrics",
        }

    def _operator_ports(self, previous: dict[str, str]) -> dict[str, int]:
        ports: dict[str, int] = {}
        for name in ("health", "webhook", "metrics"):
            url = previous.get(name, "")
            port = int(url.split(":")[2].split("/")[0]) if url.count(":") >= 2 else 0
            ports[name] = port if port and port_free(port) else free_port()
        return ports

    def _wait_healthy(self, url: str, timeout: float, pid_file: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if processes.alive(pid_file, "controller") is None:
                raise StartError(f"the operator exited; see its log in {self.dir / 'logs'}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise StartError(f"the operator is not healthy after {timeout:.0f} s; see {self.dir / 'logs'}")

    def _wait_webhooks(self, port: int, timeout: float) -> None:
        """Until kopf has pointed the webhook configurations at this operator: before that, workflows
        would be admitted without their principal."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            urls = [
                self.kubectl(
                    "get",
                    f"{kind}webhookconfiguration",
                    WEBHOOK_CONFIGURATION,
                    "--ignore-not-found",
                    "-o",
                    "jsonpath={.webhooks[*].clientConfig.url}",
                    check=False,
                ).stdout
                for kind in ("mutating", "validating")
            ]
            if all(f":{port}/" in url for url in urls):
                return
            time.sleep(0.2)
        raise StartError(f"the operator did not register its admission webhooks within {timeout:.0f} s")

    # -- down ----------------------------------------------------------------------------------------

    def stop_operator(self) -> bool:
        return processes.stop(self.operator_pid, "controller")

    def down(self) -> None:
        self.stop_operator()
        self.cluster.stop()
