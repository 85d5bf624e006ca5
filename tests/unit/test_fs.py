"""io.fs handlers on real files: confinement and compensation from snapshots."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from controller.capabilities.base import CapabilityError, Invocation
from controller.capabilities.handlers.fs import HANDLERS


def call(
    capability: str, inputs: dict[str, object], workspace: Path, key: str = "k1", *, in_doubt: bool = False
) -> dict[str, object]:
    inv = Invocation("ns", "wf", "step", key, 1, workspace, forward_in_doubt=in_doubt)
    return asyncio.run(HANDLERS[capability](dict(inputs), inv))


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.txt", "a/../../outside.txt", ".airun/snapshots/x"])
def test_paths_outside_the_workspace_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(CapabilityError) as error:
        call("io.fs.write_file", {"path": path, "content": "x"}, tmp_path / "ws")
    assert not error.value.retryable
    assert not (tmp_path / "outside.txt").exists()


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", ws / "link")
    with pytest.raises(CapabilityError, match="symlink"):
        call("io.fs.write_file", {"path": "link/x.txt", "content": "x"}, ws)
    assert not (tmp_path / "secret" / "x.txt").exists()


def test_hardlink_is_refused(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    os.link(outside, ws / "h.txt")
    with pytest.raises(CapabilityError, match="hard link"):
        call("io.fs.write_file", {"path": "h.txt", "content": "x"}, ws)
    assert outside.read_text() == "keep"


def test_write_then_restore_brings_back_the_old_content(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "d").mkdir(parents=True)
    (ws / "d" / "f.txt").write_text("old")
    assert call("io.fs.write_file", {"path": "d/f.txt", "content": "new"}, ws)["created"] is False
    # A re-run with the same key keeps the first snapshot (the state before the step).
    call("io.fs.write_file", {"path": "d/f.txt", "content": "newer"}, ws)
    assert call("io.fs.restore", {"snapshot": "k1"}, ws) == {"restored": 1}
    assert (ws / "d" / "f.txt").read_text() == "old"


def test_restore_of_a_created_file_removes_it_and_is_harmless_when_nothing_happened(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    call("io.fs.write_file", {"path": "new.txt", "content": "x"}, ws)
    call("io.fs.restore", {"snapshot": "k1"}, ws)
    assert not (ws / "new.txt").exists()
    # Only a step that may never have run (in doubt) may have no snapshot...
    assert call("io.fs.restore", {"snapshot": "never"}, ws, in_doubt=True) == {"restored": 0}
    # ...a completed step's snapshot was written before its change: missing means lost, and that fails.
    with pytest.raises(CapabilityError, match="missing") as error:
        call("io.fs.restore", {"snapshot": "never"}, ws)
    assert not error.value.retryable


def test_delete_is_undone(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "data.json").write_text("{}")
    assert call("io.fs.delete", {"path": "data.json"}, ws) == {"path": "data.json", "existed": True}
    call("io.fs.restore", {"snapshot": "k1"}, ws)
    assert (ws / "data.json").read_text() == "{}"


def test_read_file(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("hello")
    assert call("io.fs.read_file", {"path": "a.txt"}, ws) == {"content": "hello", "bytes": 5}


def test_move_and_its_undo(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("A")
    (ws / "b.txt").write_text("old B")
    call("io.fs.move", {"source": "a.txt", "destination": "b.txt"}, ws)
    assert not (ws / "a.txt").exists() and (ws / "b.txt").read_text() == "A"
    # A re-run with the same key (after a crash) is harmless.
    call("io.fs.move", {"source": "a.txt", "destination": "b.txt"}, ws)
    call("io.fs.restore", {"snapshot": "k1"}, ws)
    assert (ws / "a.txt").read_text() == "A" and (ws / "b.txt").read_text() == "old B"


def test_copy_and_its_undo(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("A")
    assert call("io.fs.copy", {"source": "a.txt", "destination": "sub/c.txt"}, ws)["bytes"] == 1
    call("io.fs.restore", {"snapshot": "k1"}, ws)
    assert not (ws / "sub" / "c.txt").exists() and (ws / "a.txt").read_text() == "A"


def test_mkdir_undo_removes_only_what_it_created(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "keep").mkdir(parents=True)
    assert call("io.fs.mkdir", {"path": "keep/x/y"}, ws) == {"path": "keep/x/y", "created": True}
    call("io.fs.restore", {"snapshot": "k1"}, ws)
    assert (ws / "keep").is_dir() and not (ws / "keep" / "x").exists()


def test_list_dir_and_stat(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "d").mkdir(parents=True)
    (ws / "d" / "f.txt").write_text("12345")
    call("io.fs.write_file", {"path": "g.txt", "content": "x"}, ws)  # creates the hidden snapshot folder
    listing = call("io.fs.list_dir", {"path": "."}, ws)
    assert [e["name"] for e in listing["entries"]] == ["d", "g.txt"]  # .airun is hidden
    assert call("io.fs.stat", {"path": "d/f.txt"}, ws)["bytes"] == 5
    assert call("io.fs.stat", {"path": "nope"}, ws) == {"exists": False}
