"""io.fs.* handlers: confined to the namespace's workspace, undone from durable snapshots.

Every change first records, under the step's idempotency key, each path it is about to touch as it was
(a file's content, a folder, or nothing). `io.fs.restore` puts all of them back, newest first. A re-run
with the same key keeps the first record (the state before the step). A restore without a record does
nothing only when the step may never have run (it was in doubt); for a completed step the record was
written before its change, so a missing one is a lost snapshot and the restore fails (a person must act).
Where the records live: controller.capabilities.snapshots.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from controller.capabilities import snapshots
from controller.capabilities.base import CapabilityError, Handler, Invocation

RESERVED = snapshots.RESERVED  # snapshots live here; workflows cannot touch it
MAX_READ_BYTES = 1024 * 1024
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
MAX_LIST_ENTRIES = 1000


def confine(workspace: Path, relative: str) -> Path:
    """The file RELATIVE names inside WORKSPACE, or a CapabilityError: no absolute paths, no `..`, no
    symlinks on the way, no hard links to files elsewhere."""
    if not relative or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise CapabilityError(f"path {relative!r} must be relative to the workspace", retryable=False)
    parts = PurePosixPath(relative).parts
    if ".." in parts:
        raise CapabilityError(f"path {relative!r} leaves the workspace (..)", retryable=False)
    if parts and parts[0] == RESERVED:
        raise CapabilityError(f"path {relative!r} is reserved for the operator", retryable=False)
    workspace.mkdir(parents=True, exist_ok=True)
    current = workspace.resolve()
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise CapabilityError(f"path {relative!r} goes through a symlink ({part})", retryable=False)
    if current.is_file() and current.stat().st_nlink > 1:
        raise CapabilityError(f"path {relative!r} is a hard link; refused", retryable=False)
    return current


def take_snapshot(inv: Invocation, relative: str, target: Path) -> None:
    """Records TARGET as it is now, once per (key, path)."""
    directory = snapshots.fs_dir(inv.workspace, inv.workflow_uid, inv.idempotency_key)
    record_file = _record_file(inv, relative)
    if record_file.exists():
        return
    record: dict[str, Any] = {
        "path": relative,
        "order": len(list(directory.glob("*.json"))) if directory.exists() else 0,
    }
    if target.is_file():
        if target.stat().st_size > MAX_SNAPSHOT_BYTES:
            raise CapabilityError(
                f"{relative} is larger than {MAX_SNAPSHOT_BYTES} bytes: it cannot be snapshotted for compensation",
                retryable=False,
            )
        record["kind"] = "file"
        record["content"] = base64.b64encode(target.read_bytes()).decode()
    elif target.is_dir():
        record["kind"] = "dir"
    else:
        record["kind"] = "absent"
    snapshots.atomic_write(record_file, json.dumps(record).encode())


def _record_file(inv: Invocation, relative: str) -> Path:
    directory = snapshots.fs_dir(inv.workspace, inv.workflow_uid, inv.idempotency_key)
    return directory / (hashlib.sha256(relative.encode()).hexdigest()[:24] + ".json")


def _record(inv: Invocation, relative: str) -> dict[str, Any] | None:
    path = _record_file(inv, relative)
    return json.loads(path.read_text()) if path.exists() else None


def _was_absent(inv: Invocation, relative: str) -> bool:
    record = _record(inv, relative)
    return record is not None and record["kind"] == "absent"


def _write(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    target = confine(inv.workspace, inputs["path"])
    if target.is_dir():
        raise CapabilityError(f"{inputs['path']} is a folder", retryable=False)
    take_snapshot(inv, inputs["path"], target)
    data = inputs["content"].encode()
    snapshots.atomic_write(target, data)
    return {
        "path": inputs["path"],
        "bytes": len(data),
        "created": _was_absent(inv, inputs["path"]),
    }


def _append(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    target = confine(inv.workspace, inputs["path"])
    take_snapshot(inv, inputs["path"], target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, inputs["content"].encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"path": inputs["path"], "bytes": target.stat().st_size}


def _read(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    target = confine(inv.workspace, inputs["path"])
    if not target.is_file():
        raise CapabilityError(f"{inputs['path']}: no such file", retryable=False)
    if target.stat().st_size > MAX_READ_BYTES:
        raise CapabilityError(f"{inputs['path']}: larger than {MAX_READ_BYTES} bytes", retryable=False)
    data = target.read_bytes()
    try:
        content = data.decode()
    except UnicodeDecodeError as error:
        raise CapabilityError(f"{inputs['path']}: not UTF-8 text", retryable=False) from error
    return {"content": content, "bytes": len(data)}


def _delete(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    target = confine(inv.workspace, inputs["path"])
    if target.is_dir():
        raise CapabilityError(f"{inputs['path']} is a folder; io.fs.delete removes files", retryable=False)
    take_snapshot(inv, inputs["path"], target)
    existed = target.exists()
    target.unlink(missing_ok=True)
    return {"path": inputs["path"], "existed": existed}


def _copy(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    source = confine(inv.workspace, inputs["source"])
    destination = confine(inv.workspace, inputs["destination"])
    if not source.is_file():
        raise CapabilityError(f"{inputs['source']}: no such file", retryable=False)
    if destination.is_dir():
        raise CapabilityError(f"{inputs['destination']} is a folder", retryable=False)
    take_snapshot(inv, inputs["destination"], destination)
    snapshots.atomic_write(destination, source.read_bytes())
    return {"source": inputs["source"], "destination": inputs["destination"], "bytes": destination.stat().st_size}


def _move(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    source = confine(inv.workspace, inputs["source"])
    destination = confine(inv.workspace, inputs["destination"])
    if not source.is_file():
        # A re-run (same key) after the move happened finds the source recorded and the file moved.
        record = _record(inv, inputs["source"])
        if record is not None and record["kind"] == "file" and destination.is_file():
            return {"source": inputs["source"], "destination": inputs["destination"]}
        raise CapabilityError(f"{inputs['source']}: no such file", retryable=False)
    if destination.is_dir():
        raise CapabilityError(f"{inputs['destination']} is a folder", retryable=False)
    take_snapshot(inv, inputs["source"], source)
    take_snapshot(inv, inputs["destination"], destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    source.replace(destination)
    return {"source": inputs["source"], "destination": inputs["destination"]}


def _mkdir(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    target = confine(inv.workspace, inputs["path"])
    if target.exists() and not target.is_dir():
        raise CapabilityError(f"{inputs['path']} exists and is not a folder", retryable=False)
    # Record every folder this creates, outermost first, so the restore removes them innermost first.
    parts = PurePosixPath(inputs["path"]).parts
    for i in range(1, len(parts) + 1):
        relative = str(PurePosixPath(*parts[:i]))
        take_snapshot(inv, relative, inv.workspace.resolve() / relative)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    return {"path": inputs["path"], "created": created}


def _entry(path: Path) -> dict[str, Any]:
    stat = path.lstat()
    kind = "symlink" if path.is_symlink() else "dir" if path.is_dir() else "file"
    return {
        "name": path.name,
        "type": kind,
        "bytes": stat.st_size if kind == "file" else 0,
        "modified": datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(timespec="seconds"),
    }


def _list_dir(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    target = confine(inv.workspace, inputs.get("path") or ".")
    if not target.is_dir():
        raise CapabilityError(f"{inputs.get('path')}: no such folder", retryable=False)
    names = sorted(p for p in target.iterdir() if not (p.name == RESERVED and p.parent == inv.workspace.resolve()))
    entries = [_entry(p) for p in names[:MAX_LIST_ENTRIES]]
    return {"entries": entries, "count": len(names), "truncated": len(names) > MAX_LIST_ENTRIES}


def _stat(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    target = confine(inv.workspace, inputs["path"])
    if not target.exists():
        return {"exists": False}
    return {"exists": True, **{k: v for k, v in _entry(target).items() if k != "name"}}


def _restore(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    directory = snapshots.find_fs_dir(inv.workspace, inv.workflow_uid, inputs["snapshot"])
    if directory is None:
        if inv.forward_in_doubt:
            return {"restored": 0}  # the step was cut off before its snapshot: the change never happened
        raise CapabilityError(
            f"the snapshot {inputs['snapshot']} of a completed step is missing: nothing to restore from; "
            "a person must put the files back",
            retryable=False,
        )
    records = sorted((json.loads(f.read_text()) for f in directory.glob("*.json")), key=lambda r: r["order"])
    for record in reversed(records):
        target = confine(inv.workspace, record["path"])
        if record["kind"] == "file":
            snapshots.atomic_write(target, base64.b64decode(record["content"]))
        elif record["kind"] == "absent":
            if target.is_dir():
                if not any(target.iterdir()):
                    target.rmdir()
            else:
                target.unlink(missing_ok=True)
        # "dir": the folder existed before; nothing to put back.
    return {"restored": len(records)}


def _threaded(function: Callable[[dict[str, Any], Invocation], dict[str, Any]]) -> Handler:
    async def handler(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
        return await asyncio.to_thread(function, inputs, inv)

    return handler


HANDLERS: dict[str, Handler] = {
    "io.fs.read_file": _threaded(_read),
    "io.fs.write_file": _threaded(_write),
    "io.fs.append_file": _threaded(_append),
    "io.fs.delete": _threaded(_delete),
    "io.fs.copy": _threaded(_copy),
    "io.fs.move": _threaded(_move),
    "io.fs.mkdir": _threaded(_mkdir),
    "io.fs.list_dir": _threaded(_list_dir),
    "io.fs.stat": _threaded(_stat),
    "io.fs.restore": _threaded(_restore),
}
