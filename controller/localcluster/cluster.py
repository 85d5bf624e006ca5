"""One local control plane: etcd, kube-apiserver and kube-controller-manager on free loopback ports, with
its data in a directory (and kube-scheduler when a node joins it: `make e2e`).

The controller-manager is what makes it behave like any cluster: owned objects (Approvals of a deleted
Workflow) are garbage-collected, deleted namespaces finish deleting, namespaces get their `default`
ServiceAccount and `kube-root-ca.crt`. No kubelet runs here (no Pod ever starts), so no scheduler either:
`make e2e` adds a node (tools/e2e/node.py) and the scheduler.

Layout of the state directory (`.airun/` for `make up`, a temporary one in tests):
  kubeconfig          contexts admin, alice, bob, agent, operator (certificates embedded)
  cluster.json        the ports, reused across restarts so the kubeconfig stays valid
  pki/                CA, serving certificate, user and component certificates, service-account key
  components/         one kubeconfig per control plane component (controller-manager, scheduler)
  etcd/               etcd's data: kept across stop/start
  logs/               etcd.log, kube-apiserver.log, kube-controller-manager.log, kube-scheduler.log
  run/                pid files
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from controller.localcluster import processes
from controller.localcluster.binaries import find_binaries
from controller.localcluster.pki import CONTROLLER_MANAGER, IDENTITIES, PKI, SCHEDULER, Identity

SERVICE_CIDR = "10.0.0.0/24"


class StartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the servers do: a port left in TIME_WAIT by our own previous run is free to take again.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int


# What runs, in the order it starts (stopped in the reverse order).
SERVERS = ("etcd", "kube-apiserver")


class LocalCluster:
    def __init__(
        self,
        state_dir: Path,
        *,
        fast_etcd: bool = False,
        die_with_parent: bool = False,
        address: str = "127.0.0.1",
        scheduler: bool = False,
        apiserver_args: tuple[str, ...] = (),
    ) -> None:
        """FAST_ETCD runs etcd without fsync (tests only: never call figures from it production ones).
        DIE_WITH_PARENT ties the processes to this one's life (tests); `make up` leaves them detached.
        ADDRESS is where the API server listens and what it advertises: loopback, or the node's address
        when Pods must reach it through the `kubernetes` Service (make e2e). SCHEDULER runs kube-scheduler
        too (only useful with a node: nothing would run what it schedules). APISERVER_ARGS are added to the
        API server's (a node's kubelet client certificate, for `kubectl logs` and `exec`)."""
        self.dir = state_dir.resolve()
        self.fast_etcd = fast_etcd
        self.die_with_parent = die_with_parent
        self.address = address
        self.apiserver_args = apiserver_args
        self.pki = PKI(self.dir / "pki", server_addresses=() if address == "127.0.0.1" else (address,))
        self.components = self.dir / "components"
        self.controllers = ("kube-controller-manager", *(["kube-scheduler"] if scheduler else []))
        self.kubeconfig = self.dir / "kubeconfig"
        self.logs = self.dir / "logs"
        self.run = self.dir / "run"
        self._ports_file = self.dir / "cluster.json"

    # -- state ---------------------------------------------------------------------------------------

    @property
    def ports(self) -> Ports:
        return Ports(**json.loads(self._ports_file.read_text()))

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.ports.apiserver}"

    def component_kubeconfig(self, identity: Identity) -> Path:
        return self.components / f"{identity.context}.kubeconfig"

    def _pid(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def running(self) -> bool:
        return all(processes.alive(self._pid(n), n) for n in (*SERVERS, *self.controllers))

    def _choose_ports(self) -> Ports:
        if self._ports_file.exists():
            ports = self.ports
            etcd_up = processes.alive(self._pid("etcd"), "etcd") is not None
            wanted = [] if etcd_up else [ports.etcd_client, ports.etcd_peer]
            if processes.alive(self._pid("kube-apiserver"), "kube-apiserver") is None:
                wanted.append(ports.apiserver)
            busy = [p for p in wanted if not port_free(p)]
            if not busy:
                return ports
            if etcd_up:  # new ports: an API server looking for an etcd that cannot start (this one holds the data)
                raise StartError(f"port {busy} is taken by another process while etcd runs: stop it first")
        ports = Ports(free_port(), free_port(), free_port())
        self._ports_file.write_text(json.dumps(ports.__dict__) + "\n")
        return ports

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> float:
        """Starts whatever is not running and waits for /readyz. Returns the seconds it took."""
        started = time.monotonic()
        for sub in (self.logs, self.run, self.dir / "etcd", self.components):
            sub.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        self.pki.ensure()
        ports = self._choose_ports()
        self._write_kubeconfig(ports)
        for identity in (CONTROLLER_MANAGER, SCHEDULER):
            self.write_component_kubeconfig(identity, ports)
        binaries = find_binaries()
        if processes.alive(self._pid("etcd"), "etcd") is None:
            self._start_etcd(binaries / "etcd", ports)
        if processes.alive(self._pid("kube-apiserver"), "kube-apiserver") is None:
            self._start_apiserver(binaries / "kube-apiserver", ports)
        self._wait_ready(timeout - (time.monotonic() - started))
        # After /readyz: both would only log connection errors before. Neither is waited for: their
        # controllers catch up within seconds, and nothing of `up` depends on them.
        if processes.alive(self._pid("kube-controller-manager"), "kube-controller-manager") is None:
            self._start_controller_manager(binaries / "kube-controller-manager")
        scheduler_down = processes.alive(self._pid("kube-scheduler"), "kube-scheduler") is None
        if "kube-scheduler" in self.controllers and scheduler_down:
            self._start_scheduler(binaries / "kube-scheduler")
        return time.monotonic() - started

    def stop(self) -> None:
        # The clients first, then the API server: each would only log errors while the next is gone.
        # The scheduler is stopped even when this instance does not run one (an earlier one might have).
        for name in ("kube-scheduler", "kube-controller-manager", *reversed(SERVERS)):
            processes.stop(self._pid(name), name)

    def _start_etcd(self, binary: Path, ports: Ports) -> None:
        client = f"http://127.0.0.1:{ports.etcd_client}"
        peer = f"http://127.0.0.1:{ports.etcd_peer}"
        argv = [
            str(binary),
            "--name=airun",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=airun={peer}",
            "--log-level=warn",
            "--quota-backend-bytes=4294967296",
        ]
        if self.fast_etcd:
            argv.append("--unsafe-no-fsync")
        processes.start(
            argv,
            pid_file=self._pid("etcd"),
            log_file=self.logs / "etcd.log",
            die_with_parent=self.die_with_parent,
        )

    def _start_apiserver(self, binary: Path, ports: Ports) -> None:
        pki = self.pki
        argv = [
            str(binary),
            f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
            f"--bind-address={self.address}",
            f"--advertise-address={self.address}",
            f"--secure-port={ports.apiserver}",
            f"--cert-dir={self.dir / 'pki'}",
            f"--tls-cert-file={pki.server_cert}",
            f"--tls-private-key-file={pki.server_key}",
            f"--client-ca-file={pki.ca_cert}",
            # Node: a kubelet (make e2e) may read what its own Pods need; everything else is RBAC.
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--v=1",
            *self.apiserver_args,
        ]
        if self.address == "127.0.0.1":
            # A loopback address is no valid endpoint: the `kubernetes` Service has none here (no Pod
            # would reach it anyway). On a node's address (make e2e) the API server publishes it.
            argv.append("--endpoint-reconciler-type=none")
        processes.start(
            argv,
            pid_file=self._pid("kube-apiserver"),
            log_file=self.logs / "kube-apiserver.log",
            die_with_parent=self.die_with_parent,
        )

    def _start_controller_manager(self, binary: Path) -> None:
        kubeconfig = self.component_kubeconfig(CONTROLLER_MANAGER)
        argv = [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            # Each controller acts as its own ServiceAccount of kube-system, as on any cluster.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca_cert}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false",
            "--secure-port=0",  # no metrics or health endpoint: one port fewer to collide
            "--v=1",
        ]
        processes.start(
            argv,
            pid_file=self._pid("kube-controller-manager"),
            log_file=self.logs / "kube-controller-manager.log",
            die_with_parent=self.die_with_parent,
        )

    def _start_scheduler(self, binary: Path) -> None:
        kubeconfig = self.component_kubeconfig(SCHEDULER)
        argv = [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--secure-port=0",
            "--v=1",
        ]
        processes.start(
            argv,
            pid_file=self._pid("kube-scheduler"),
            log_file=self.logs / "kube-scheduler.log",
            die_with_parent=self.die_with_parent,
        )

    def _ssl_context(self, context: str = "admin") -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.user_cert(context)), str(self.pki.user_key(context)))
        return ctx

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + max(timeout, 1.0)
        ctx = self._ssl_context()
        last = "no answer"
        while time.monotonic() < deadline:
            for name in SERVERS:
                if processes.alive(self._pid(name), name) is None:
                    raise StartError(f"{name} exited; see {self.logs / (name + '.log')}")
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=5) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as error:
                last = f"HTTP {error.code}"
            except (OSError, urllib.error.URLError) as error:
                last = str(error)
            time.sleep(0.2)
        raise StartError(f"kube-apiserver not ready after {timeout:.0f} s ({last}); see {self.logs}")

    # -- kubeconfig ----------------------------------------------------------------------------------

    def _kubeconfig(self, ports: Ports, identities: tuple[Identity, ...]) -> dict[str, object]:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "airun",
                    "cluster": {
                        "server": f"https://{self.address}:{ports.apiserver}",
                        "certificate-authority-data": b64(self.pki.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": i.context,
                    "user": {
                        "client-certificate-data": b64(self.pki.user_cert(i.context)),
                        "client-key-data": b64(self.pki.user_key(i.context)),
                    },
                }
                for i in identities
            ],
            "contexts": [{"name": i.context, "context": {"cluster": "airun", "user": i.context}} for i in identities],
            "current-context": identities[0].context,
            "preferences": {},
        }

    @staticmethod
    def _write(path: Path, config: dict[str, object]) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.chmod(0o600)
        tmp.replace(path)

    def _write_kubeconfig(self, ports: Ports) -> None:
        self._write(self.kubeconfig, self._kubeconfig(ports, IDENTITIES))

    def write_component_kubeconfig(self, identity: Identity, ports: Ports | None = None) -> Path:
        """The kubeconfig of one component (its own certificate, made by the PKI), for this cluster."""
        path = self.component_kubeconfig(identity)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write(path, self._kubeconfig(ports or self.ports, (identity,)))
        return path
