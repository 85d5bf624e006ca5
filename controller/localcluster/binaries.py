"""Finds the control plane binaries, building them from the pinned Go module when missing."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tools" / "k8s" / "build.sh"


class BinariesNotFound(RuntimeError):
    pass


def _complete(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in REQUIRED)


@functools.cache
def find_binaries() -> Path:
    """The directory holding etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl.

    Order: AIRUN_K8S_BIN, then the project's own build (tools/k8s/build.sh, cached outside the repository,
    built only when missing). envtest's KUBEBUILDER_ASSETS is not enough: it has no controller-manager.
    """
    for variable in ("AIRUN_K8S_BIN",):
        value = os.environ.get(variable)
        if value:
            directory = Path(value)
            if not _complete(directory):
                missing = [n for n in REQUIRED if not os.access(directory / n, os.X_OK)]
                raise BinariesNotFound(f"{variable}={value} lacks executable {', '.join(missing)}")
            return directory
    if not BUILD_SCRIPT.exists():
        raise BinariesNotFound(
            "no control plane binaries: set AIRUN_K8S_BIN to a directory holding " + ", ".join(REQUIRED)
        )
    if shutil.which("go") is None:
        raise BinariesNotFound("building the control plane needs Go; or set AIRUN_K8S_BIN")
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], check=False, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise BinariesNotFound(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
    directory = Path(result.stdout.strip().splitlines()[-1])
    if not _complete(directory):
        raise BinariesNotFound(f"{BUILD_SCRIPT} did not produce {', '.join(REQUIRED)} in {directory}")
    return directory
