"""A single-node Kubernetes cluster on this machine for `make e2e`, from binaries (as Kubernetes'
hack/local-up-cluster.sh does): the local control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) on the node's address, containerd + runc from Debian as the container runtime, the bridge CNI
plugin from Debian's containernetworking-plugins, kubelet and kube-proxy of the same Kubernetes release.

Every packet stays on this machine: Pods live on a bridge this script creates (no address on any other
interface, no masquerading to the outside, a FORWARD rule drops whatever would leave the bridge), and the API
server listens on the bridge's address so Pods reach it through the `kubernetes` Service.

    node.py up STATE      starts whatever is not running (idempotent); prints the admin kubeconfig's path
    node.py down STATE    stops everything by pid and removes what `up` made: Pods and their network
                          namespaces, mounts, cgroups, kube-proxy's and our iptables rules, the bridge
    node.py import STATE IMAGE.tar ...   loads images into the node's containerd (no registry here)

Everything lives under STATE (`.airun/e2e/` for `make e2e`); network.json records what was changed on the host,
so `down` undoes exactly that, even after a failed `up`.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from controller.localcluster import processes
from controller.localcluster.binaries import find_binaries
from controller.localcluster.cluster import SERVICE_CIDR, LocalCluster, free_port
from controller.localcluster.pki import KUBE_PROXY, node_identity

NODE = "airun-e2e"
BRIDGE = os.environ.get("AIRUN_E2E_BRIDGE", "airun-e2e0")  # at most 15 characters (IFNAMSIZ)
POD_CIDR = ipaddress.ip_network(os.environ.get("AIRUN_E2E_POD_CIDR", "10.244.0.0/24"))
NODE_IP = str(next(POD_CIDR.hosts()))  # the bridge's address: the node's, the Pods' gateway, the API server's
RULE_COMMENT = "airun-e2e: Pods stay on their bridge"
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
PAUSE_IMAGE = os.environ.get("PAUSE_IMAGE", "airun.local/pause:e2e")
CGROUP_ROOT = "/airun-e2e"  # the kubelet's cgroups (cgroup v1: one tree per controller)
# Host settings the kubelet (protectKernelDefaults: false) and kube-proxy change: recorded before they start,
# put back by `down`.
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/conf/all/route_localnet",
)
IPTABLES = ("iptables", "ip6tables")


class NodeError(RuntimeError):
    pass


def run(*argv: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip() or result.stdout}")
    if result.returncode != 0 and not quiet:
        print(f"e2e node: {' '.join(argv)}: {result.stderr.strip()}", file=sys.stderr)
    return result


class Node:
    def __init__(self, state: Path) -> None:
        self.dir = state.resolve()
        self.cluster = LocalCluster(
            self.dir / "cluster",
            address=NODE_IP,
            scheduler=True,
            apiserver_args=(
                # `kubectl logs/exec` and the API server's proxy reach the kubelet as the admin user
                f"--kubelet-client-certificate={self.dir / 'cluster' / 'pki' / 'users' / 'admin.crt'}",
                f"--kubelet-client-key={self.dir / 'cluster' / 'pki' / 'users' / 'admin.key'}",
                "--kubelet-preferred-address-types=InternalIP",
            ),
        )
        self.run_dir = self.dir / "run"
        self.logs = self.dir / "logs"
        self.containerd_dir = self.dir / "containerd"
        self.socket = self.containerd_dir / "containerd.sock"
        self.cni_conf = self.dir / "cni" / "net.d"
        self.kubelet_dir = self.dir / "kubelet"
        self.proxy_dir = self.dir / "kube-proxy"
        self.network_file = self.dir / "network.json"
        self.ports_file = self.dir / "node-ports.json"

    # -- helpers ---------------------------------------------------------------------------------------

    def _pid(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(str(find_binaries() / "kubectl"), f"--kubeconfig={self.cluster.kubeconfig}", *args, check=check)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ctr", f"--address={self.socket}", "--namespace=k8s.io", *args, check=check, quiet=not check)

    def _network(self) -> dict[str, object]:
        return json.loads(self.network_file.read_text()) if self.network_file.exists() else {}

    def _record(self, **changes: object) -> None:
        self.network_file.write_text(json.dumps({**self._network(), **changes}, indent=2) + "\n")

    def _ports(self) -> dict[str, int]:
        if self.ports_file.exists():
            ports: dict[str, int] = json.loads(self.ports_file.read_text())
            return ports
        ports = {name: free_port() for name in ("kubelet", "kubelet_healthz", "proxy_healthz", "proxy_metrics")}
        self.ports_file.write_text(json.dumps(ports) + "\n")
        return ports

    # -- checks ----------------------------------------------------------------------------------------

    def check_host(self) -> None:
        if os.geteuid() != 0:
            raise NodeError("a node needs root (network namespaces, cgroups, iptables, mounts)")
        for program in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip"):
            if shutil.which(program) is None:
                raise NodeError(f"{program} is missing: tools/e2e/ensure-packages.sh installs it")
        for plugin in ("bridge", "host-local", "loopback"):
            if not (CNI_BIN / plugin).exists():
                raise NodeError(f"CNI plugin {CNI_BIN / plugin} is missing (Debian's containernetworking-plugins)")
        for name in ("kubelet", "kube-proxy"):
            if not os.access(find_binaries() / name, os.X_OK):
                raise NodeError(f"{name} is not built: bash tools/k8s/build.sh --node")
        addresses = run("ip", "-4", "-o", "addr", "show").stdout.splitlines()
        for line in addresses:
            fields = line.split()
            interface, address = fields[1], ipaddress.ip_interface(fields[3])
            if interface != BRIDGE and address.network.overlaps(POD_CIDR):
                raise NodeError(f"{interface} has {address}, inside the Pod range {POD_CIDR}: set AIRUN_E2E_POD_CIDR")

    # -- network ---------------------------------------------------------------------------------------

    def _ensure_network(self) -> None:
        if run("ip", "link", "show", BRIDGE, check=False, quiet=True).returncode != 0:
            self._record(bridge=BRIDGE)  # recorded before it exists: a half-made bridge is removed too
            run("ip", "link", "add", BRIDGE, "type", "bridge")
        gateway = f"{NODE_IP}/{POD_CIDR.prefixlen}"
        if gateway not in run("ip", "-4", "-o", "addr", "show", "dev", BRIDGE).stdout:
            run("ip", "addr", "add", gateway, "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        # The host reaches Service addresses through kube-proxy's DNAT; the route only makes them routable.
        run("ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)
        rule = ["FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-m", "comment", "--comment", RULE_COMMENT, "-j", "DROP"]
        if run("iptables", "-C", *rule, check=False, quiet=True).returncode != 0:
            self._record(forward_rule=rule)
            run("iptables", "-I", *rule)

    def _kube_chains(self, family: str) -> dict[str, list[str]]:
        """The KUBE-* chains of each table: {table: [chain, ...]}."""
        chains: dict[str, list[str]] = {}
        table = ""
        for line in run(f"{family}-save", check=False, quiet=True).stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":KUBE-"):
                chains.setdefault(table, []).append(line[1:].split()[0])
        return chains

    def _record_host(self) -> None:
        """Before the kubelet and kube-proxy first start: the sysctls they set and the iptables chains there were."""
        if "sysctls" in self._network():
            return
        sysctls = {k: Path("/proc/sys", k).read_text().strip() for k in SYSCTLS if Path("/proc/sys", k).exists()}
        self._record(
            sysctls=sysctls,
            kube_chains={f: self._kube_chains(f) for f in IPTABLES},
            log_links_existed=Path("/var/log/containers").exists(),
        )

    def _restore_host(self) -> None:
        network = self._network()
        before = network.get("kube_chains")
        if isinstance(before, dict):
            # What kube-proxy --cleanup leaves (KUBE-FIREWALL, made by the kubelet and kube-proxy): the jumps to
            # each chain that was not there before, then the chain.
            for family in IPTABLES:
                for table, chains in self._kube_chains(family).items():
                    for chain in chains:
                        if chain in before.get(family, {}).get(table, []):
                            continue
                        for rule in run(family, "-t", table, "-S", check=False, quiet=True).stdout.splitlines():
                            if (
                                rule.startswith("-A ")
                                and f" -j {chain}" in rule + " "
                                and not rule.startswith(f"-A {chain} ")
                            ):
                                run(family, "-t", table, "-D", *shlex.split(rule[3:]), check=False)
                        run(family, "-t", table, "-F", chain, check=False, quiet=True)
                for table, chains in self._kube_chains(family).items():
                    for chain in chains:
                        if chain not in before.get(family, {}).get(table, []):
                            run(family, "-t", table, "-X", chain, check=False)
        sysctls = network.get("sysctls")
        if isinstance(sysctls, dict):
            for key, value in sysctls.items():
                path = Path("/proc/sys", key)
                if path.read_text().strip() != value:
                    path.write_text(value + "\n")

    def _remove_network(self) -> None:
        network = self._network()
        rule = network.get("forward_rule")
        if isinstance(rule, list):
            while run("iptables", "-C", *rule, check=False, quiet=True).returncode == 0:
                run("iptables", "-D", *rule, check=False)
        if network.get("bridge"):
            # Host ends of Pod veths left on the bridge (their network namespace is gone by now).
            for line in run("ip", "-o", "link", "show", "master", BRIDGE, check=False, quiet=True).stdout.splitlines():
                run("ip", "link", "delete", line.split(":")[1].strip().split("@")[0], check=False)
            run("ip", "link", "delete", BRIDGE, check=False, quiet=True)  # its address and route go with it
        self.network_file.unlink(missing_ok=True)

    # -- containerd ------------------------------------------------------------------------------------

    def _containerd_config(self) -> Path:
        d = self.containerd_dir
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        text = f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.overlayfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: runc could not set the negative OOM score CRI asks for on sandboxes.
  restrict_oom_score_adj = true
  # Pod network namespaces under the state directory, so `down` finds and removes exactly ours.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.containerd]
    # No overlayfs on these machines: the native snapshotter copies layers (slower, works everywhere).
    snapshotter = "native"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d / "runc"}"
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.cni_conf}"
"""
        path = d / "config.toml"
        path.write_text(text)
        return path

    def _cni_config(self) -> None:
        self.cni_conf.mkdir(parents=True, exist_ok=True)
        first, last = list(POD_CIDR.hosts())[9], list(POD_CIDR.hosts())[-1]
        config = {
            "cniVersion": "1.0.0",
            "name": "airun-e2e",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "isDefaultGateway": True,
                    "ipMasq": False,  # nothing leaves this machine
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [
                            [
                                {
                                    "subnet": str(POD_CIDR),
                                    "rangeStart": str(first),
                                    "rangeEnd": str(last),
                                    "gateway": NODE_IP,
                                }
                            ]
                        ],
                        "dataDir": str(self.dir / "cni" / "ipam"),
                    },
                }
            ],
        }
        (self.cni_conf / "10-airun-e2e.conflist").write_text(json.dumps(config, indent=2) + "\n")

    def _start_containerd(self) -> None:
        if processes.alive(self._pid("containerd"), "containerd"):
            return
        self.containerd_dir.mkdir(parents=True, exist_ok=True)
        self._cni_config()
        config = self._containerd_config()
        processes.start(
            ["containerd", f"--config={config}", "--log-level=warn"],
            pid_file=self._pid("containerd"),
            log_file=self.logs / "containerd.log",
        )
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            if processes.alive(self._pid("containerd"), "containerd") is None or time.monotonic() > deadline:
                raise NodeError(f"containerd did not start; see {self.logs / 'containerd.log'}")
            time.sleep(0.2)

    def import_images(self, tarballs: list[Path]) -> None:
        for tarball in tarballs:
            # Unpacked for the snapshotter CRI uses, and kept by the kubelet's image GC (threshold 100 %).
            self.ctr("images", "import", "--snapshotter=native", str(tarball))

    # -- kubelet and kube-proxy ------------------------------------------------------------------------

    def _identity_kubeconfig(self, identity_name: str) -> Path:
        identity = node_identity(NODE) if identity_name == "kubelet" else KUBE_PROXY
        self.cluster.pki.ensure_identity(identity)
        return self.cluster.write_component_kubeconfig(identity)

    def _start_kubelet(self, ports: dict[str, int]) -> None:
        if processes.alive(self._pid("kubelet"), "kubelet"):
            return
        d = self.kubelet_dir
        (d / "root").mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This machine has cgroup v1, which the kubelet refuses by default since 1.31.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": CGROUP_ROOT,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "imageServiceEndpoint": f"unix://{self.socket}",
            "address": NODE_IP,
            "port": ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": ports["kubelet_healthz"],
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.cluster.pki.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "failSwapOn": False,
            # No registry: never collect the images imported into containerd.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "podLogsDir": str(d / "pod-logs"),
            "resolvConf": "/etc/resolv.conf",
            "clusterDomain": "cluster.local",
            "serializeImagePulls": False,
            "makeIPTablesUtilChains": False,
            "protectKernelDefaults": False,
        }
        (d / "config.yaml").write_text(yaml.safe_dump(config))
        argv = [
            str(find_binaries() / "kubelet"),
            f"--config={d / 'config.yaml'}",
            f"--kubeconfig={self._identity_kubeconfig('kubelet')}",
            f"--root-dir={d / 'root'}",
            f"--cert-dir={d / 'pki'}",
            f"--hostname-override={NODE}",
            f"--node-ip={NODE_IP}",
            "--v=1",
        ]
        processes.start(argv, pid_file=self._pid("kubelet"), log_file=self.logs / "kubelet.log")

    def _start_kube_proxy(self, ports: dict[str, int]) -> None:
        if processes.alive(self._pid("kube-proxy"), "kube-proxy"):
            return
        self.proxy_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self._identity_kubeconfig("kube-proxy"))},
            "hostnameOverride": NODE,
            "bindAddress": NODE_IP,
            "healthzBindAddress": f"127.0.0.1:{ports['proxy_healthz']}",
            "metricsBindAddress": f"127.0.0.1:{ports['proxy_metrics']}",
            "mode": "iptables",
            "clusterCIDR": str(POD_CIDR),
            # Pod -> Service -> Pod on one bridge: masquerade, so the reply comes back through the DNAT.
            "iptables": {"masqueradeAll": True},
            # Leave the host's conntrack sysctls alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        (self.proxy_dir / "config.yaml").write_text(yaml.safe_dump(config))
        argv = [str(find_binaries() / "kube-proxy"), f"--config={self.proxy_dir / 'config.yaml'}", "--v=1"]
        processes.start(argv, pid_file=self._pid("kube-proxy"), log_file=self.logs / "kube-proxy.log")

    def _wait_node_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        jsonpath = 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'
        while time.monotonic() < deadline:
            for name in ("containerd", "kubelet", "kube-proxy"):
                if processes.alive(self._pid(name), name) is None:
                    raise NodeError(f"{name} exited; see {self.logs / (name + '.log')}")
            ready = run(
                str(find_binaries() / "kubectl"),
                f"--kubeconfig={self.cluster.kubeconfig}",
                *("get", "node", NODE, "-o", jsonpath),
                check=False,
                quiet=True,
            )
            if ready.stdout == "True":
                return
            time.sleep(0.5)
        raise NodeError(f"node {NODE} not Ready after {timeout:.0f} s; see {self.logs}/kubelet.log")

    # -- up / down -------------------------------------------------------------------------------------

    def up(self, images: list[Path], timeout: float = 180.0) -> float:
        started = time.monotonic()
        self.check_host()
        for sub in (self.run_dir, self.logs):
            sub.mkdir(parents=True, exist_ok=True)
        self._ensure_network()
        self.cluster.start()
        self._start_containerd()
        self.import_images(images)
        ports = self._ports()
        self._ensure_cgroups()
        self._record_host()
        self._start_kubelet(ports)
        self._start_kube_proxy(ports)
        self._wait_node_ready(timeout)
        return time.monotonic() - started

    def _own_processes(self) -> list[int]:
        """Containers' shims started by our containerd (they outlive it): their command line names our socket."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(self.socket).encode() in argv:
                pids.append(int(entry.name))
        return pids

    def _remove_pods(self) -> None:
        """Stops every Pod through the kubelet (CNI DEL, network namespaces), then whatever is left directly."""
        api_up = processes.alive(self.cluster.run / "kube-apiserver.pid", "kube-apiserver") is not None
        api_up = api_up and processes.alive(self._pid("kubelet"), "kubelet") is not None
        if api_up:
            # No new Pods: the controllers that would replace the deleted ones stop first.
            for name in ("kube-scheduler", "kube-controller-manager"):
                processes.stop(self.cluster.run / f"{name}.pid", name)
            self.kubectl(
                "delete",
                "pods",
                "--all",
                "--all-namespaces",
                "--grace-period=0",
                "--force",
                "--wait=false",
                check=False,
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.ctr("tasks", "ls", "-q", check=False).stdout.strip():
                time.sleep(0.5)
        processes.stop(self._pid("kubelet"), "kubelet")
        if processes.alive(self._pid("containerd"), "containerd"):
            for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
                self.ctr("tasks", "kill", "--signal=SIGKILL", task, check=False)
                self.ctr("tasks", "delete", "--force", task, check=False)
            for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
                self.ctr("containers", "delete", container, check=False)
        processes.stop(self._pid("containerd"), "containerd")
        for pid in self._own_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)

    def _unmount_all(self) -> None:
        """Every mount under the state directory (volumes, rootfs, network namespaces), deepest first."""
        prefix = str(self.dir) + "/"
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
        for point in sorted(set(points), key=lambda p: p.count("/"), reverse=True):
            if run("umount", point, check=False, quiet=True).returncode != 0:
                run("umount", "--lazy", point, check=False)

    def _ensure_cgroups(self) -> None:
        """The kubelet's cgroup root, in every cgroup v1 hierarchy (the kubelet refuses a missing one)."""
        for controller in Path("/sys/fs/cgroup").iterdir():
            if not controller.is_dir() or controller.is_symlink():
                continue
            tree = controller / CGROUP_ROOT.lstrip("/")
            tree.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):  # an empty cpuset would admit no process
                if (tree / name).exists() and not (tree / name).read_text().strip():
                    (tree / name).write_text((controller / name).read_text())

    def _remove_log_links(self) -> None:
        """The kubelet's links in /var/log/containers (a fixed path) to the logs of our Pods."""
        links = Path("/var/log/containers")
        for link in links.glob("*.log") if links.is_dir() else []:
            if link.is_symlink() and os.readlink(link).startswith(str(self.dir) + "/"):
                link.unlink()
        if links.is_dir() and not any(links.iterdir()) and not self._network().get("log_links_existed", True):
            links.rmdir()

    def _remove_cgroups(self) -> None:
        for controller in Path("/sys/fs/cgroup").iterdir():
            tree = controller / CGROUP_ROOT.lstrip("/")
            if controller.is_symlink() or not tree.is_dir():
                continue
            for directory in sorted(
                (p for p in tree.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
            ):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            try:
                tree.rmdir()
            except OSError as error:
                print(f"e2e node: cgroup {tree} left: {error}", file=sys.stderr)

    def down(self) -> None:
        if not self.dir.exists():
            return
        self._remove_pods()
        if processes.alive(self._pid("kube-proxy"), "kube-proxy") or (self.proxy_dir / "config.yaml").exists():
            processes.stop(self._pid("kube-proxy"), "kube-proxy")
            # kube-proxy removes its own chains (KUBE-SERVICES, KUBE-POSTROUTING, ...).
            run(
                str(find_binaries() / "kube-proxy"),
                "--cleanup",
                f"--config={self.proxy_dir / 'config.yaml'}",
                check=False,
                quiet=True,
            )
        self.cluster.stop()
        self._unmount_all()
        self._remove_cgroups()
        self._remove_log_links()
        self._restore_host()
        self._remove_network()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "import"))
    parser.add_argument("state", type=Path)
    parser.add_argument("images", type=Path, nargs="*", help="image tarballs (docker save) to load")
    args = parser.parse_args()
    node = Node(args.state)
    try:
        if args.command == "up":
            took = node.up(args.images)
            print(f"e2e node: {NODE} Ready {took:.1f} s after start", file=sys.stderr)
            print(node.cluster.kubeconfig)
        elif args.command == "import":
            node.import_images(args.images)
        else:
            node.down()
    except NodeError as error:
        print(f"e2e node: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
