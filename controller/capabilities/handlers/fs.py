"""io.fs.* handlers: confined to the namespace's workspace, undone from durable snapshots."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from controller.capabilities.base import CapabilityError, Handler, Invocation

RESERVED = ".airun"  # snapshots live here; workflows cannot touch it
MAX_READ_BYTES = 1024 * 1024


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


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def _snapshot_file(workspace: Path, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in key)
    return workspace.resolve() / RESERVED / "snapshots" / f"{safe}.json"


def take_snapshot(workspace: Path, key: str, target: Path) -> None:
    """Records TARGET as it is, once per key: a re-run after a crash keeps the first snapshot, which is
    the state before the step."""
    snapshot = _snapshot_file(workspace, key)
    if snapshot.exists():
        return
    record: dict[str, Any] = {"existed": target.is_file()}
    if record["existed"]:
        record["content"] = base64.b64encode(target.read_bytes()).decode()
    _atomic_write(snapshot, json.dumps(record).encode())


def _write(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    target = confine(inv.workspace, inputs["path"])
    take_snapshot(inv.workspace, inv.idempotency_key, target)
    existed = json.loads(_snapshot_file(inv.workspace, inv.idempotency_key).read_text())["existed"]
    data = inputs["content"].encode()
    _atomic_write(target, data)
    return {"path": inputs["path"], "bytes": len(data), "created": not existed}


def _append(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    target = confine(inv.workspace, inputs["path"])
    take_snapshot(inv.workspace, inv.idempotency_key, target)
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
    take_snapshot(inv.workspace, inv.idempotency_key, target)
    existed = target.exists()
    target.unlink(missing_ok=True)
    return {"path": inputs["path"], "existed": existed}


def _restore(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    target = confine(inv.workspace, inputs["path"])
    snapshot = _snapshot_file(inv.workspace, inputs["snapshot"])
    if not snapshot.exists():
        return {"restored": False}  # the change never happened
    record = json.loads(snapshot.read_text())
    if record["existed"]:
        _atomic_write(target, base64.b64decode(record["content"]))
    else:
        target.unlink(missing_ok=True)
    return {"restored": True}


def _threaded(function: Any) -> Handler:
    async def handler(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
        result: dict[str, Any] = await asyncio.to_thread(function, inputs, inv)
        return result

    return handler


HANDLERS: dict[str, Handler] = {
    "io.fs.read_file": _threaded(_read),
    "io.fs.write_file": _threaded(_write),
    "io.fs.append_file": _threaded(_append),
    "io.fs.delete": _threaded(_delete),
    "io.fs.restore": _threaded(_restore),
}
