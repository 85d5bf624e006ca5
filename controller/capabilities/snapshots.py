"""Where the snapshots that compensations restore from live, and their collection.

Both families keep them in the workspace of the workflow's namespace, under the reserved folder that
workflows cannot touch, one folder per workflow uid:

    WORKSPACE/.airun/snapshots/UID/KEY/        io.fs.* (one record file per path)
    WORKSPACE/.airun/k8s-snapshots/UID/KEY.json k8s.* (the object before the change; Secrets sealed)

A workflow's snapshots are needed as long as it may still be compensated (a Succeeded workflow can be
rolled back at any time), so they are removed when the workflow is deleted, and a sweep at start-up
removes those of workflows deleted while the operator was down. Snapshots written before this layout
(no UID folder) are still found by restores, and left alone by the sweep.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

RESERVED = ".airun"  # inside each workspace; refused to workflows by io.fs
FAMILIES = ("snapshots", "k8s-snapshots")
log = logging.getLogger("airun.snapshots")


def atomic_write(path: Path, data: bytes) -> None:
    """Writes DATA to PATH durably (fsync) and whole: a reader sees the old file or the new one, never
    half of it. A symlink in its place is refused (O_NOFOLLOW on the temporary file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in key)


def _root(workspace: Path, family: str, uid: str) -> Path:
    base = workspace.resolve() / RESERVED / family
    return base / safe(uid) if uid else base


def fs_dir(workspace: Path, uid: str, key: str) -> Path:
    return _root(workspace, "snapshots", uid) / safe(key)


def find_fs_dir(workspace: Path, uid: str, key: str) -> Path | None:
    for candidate in (fs_dir(workspace, uid, key), fs_dir(workspace, "", key)):
        if candidate.is_dir():
            return candidate
    return None


def k8s_file(workspace: Path, uid: str, key: str) -> Path:
    return _root(workspace, "k8s-snapshots", uid) / f"{safe(key)}.json"


def find_k8s_file(workspace: Path, uid: str, key: str) -> Path | None:
    for candidate in (k8s_file(workspace, uid, key), k8s_file(workspace, "", key)):
        if candidate.is_file():
            return candidate
    return None


def collect(workspace: Path, uid: str) -> None:
    """Removes every snapshot of the workflow UID (it is gone: nothing will restore from them)."""
    if not uid:
        return
    for family in FAMILIES:
        shutil.rmtree(_root(workspace, family, uid), ignore_errors=True)


def sweep(workspaces: Path, live: Iterable[str], listed_at: float | None = None) -> int:
    """Removes the snapshots of every workflow uid not in LIVE (across all namespaces' workspaces);
    returns how many workflows' snapshots were removed. LISTED_AT: when LIVE was listed (time.time()); a
    folder changed since then is kept, since another replica may be writing it for a workflow created after
    the list."""
    alive = {safe(uid) for uid in live}
    removed = 0
    if not workspaces.is_dir():
        return 0
    for workspace in workspaces.iterdir():
        for family in FAMILIES:
            base = workspace / RESERVED / family
            if not base.is_dir():
                continue
            for folder in base.iterdir():
                # A folder named like a uid holds one workflow's snapshots; anything else is older layout.
                if not (folder.is_dir() and _looks_like_uid(folder.name) and folder.name not in alive):
                    continue
                if listed_at is None or folder.stat().st_mtime < listed_at:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
    if removed:
        log.info("removed the snapshots of %d deleted workflows", removed)
    return removed


def _looks_like_uid(name: str) -> bool:
    parts = name.split("-")
    return [len(p) for p in parts] == [8, 4, 4, 4, 12] and all(c in "0123456789abcdef-" for c in name)
