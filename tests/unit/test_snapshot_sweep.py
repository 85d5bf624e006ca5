"""The sweep of deleted workflows' snapshots at start-up, with other replicas writing meanwhile."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from controller.capabilities import snapshots


def _folder(workspaces: Path, uid: str) -> Path:
    folder = workspaces / "ns" / snapshots.RESERVED / snapshots.FAMILIES[0] / uid
    folder.mkdir(parents=True)
    (folder / "record.json").write_text("{}")
    return folder


def test_the_sweep_removes_deleted_workflows_snapshots_and_keeps_live_ones(tmp_path: Path) -> None:
    live, deleted = str(uuid.uuid4()), str(uuid.uuid4())
    kept, gone = _folder(tmp_path, live), _folder(tmp_path, deleted)
    assert snapshots.sweep(tmp_path, [live], listed_at=time.time() + 1) == 1
    assert kept.exists() and not gone.exists()


def test_the_sweep_keeps_a_folder_written_after_the_list(tmp_path: Path) -> None:
    """Another replica created a workflow after this one listed them, and wrote its first snapshot."""
    listed_at = time.time()
    old, new = _folder(tmp_path, str(uuid.uuid4())), _folder(tmp_path, str(uuid.uuid4()))
    os.utime(old, (listed_at - 60, listed_at - 60))
    assert snapshots.sweep(tmp_path, [], listed_at=listed_at) == 1
    assert new.exists() and not old.exists()
