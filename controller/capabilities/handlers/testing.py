"""test.* handlers: deterministic failures and countable side effects (see capabilities/test.yaml)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from controller.capabilities.base import CapabilityError, Handler, Invocation


def _ledger(inv: Invocation, name: str, suffix: str = "log") -> Path:
    path = inv.workspace / "ledgers" / f"{name}.{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _append_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def fail(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    await asyncio.sleep(float(inputs.get("seconds", 0)))
    fail_times = inputs.get("failTimes")
    if fail_times is None or inv.attempt <= int(fail_times):
        raise CapabilityError(f"{inputs.get('message', 'deliberate failure')} (attempt {inv.attempt})")
    return {"attempt": inv.attempt}


def _ledger_handler(idempotent: bool) -> Handler:
    async def handler(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
        ledger = _ledger(inv, inputs["ledger"])
        # which process ran the attempt: the shard tests check that a workflow never runs in two at once
        _append_line(_ledger(inv, inputs["ledger"], "starts"), f"{inv.idempotency_key} {inv.attempt} {os.getpid()}")
        await asyncio.sleep(float(inputs.get("seconds", 0)))
        if (
            idempotent
            and ledger.exists()
            and any(line.split(" ", 1)[0] == inv.idempotency_key for line in ledger.read_text().splitlines())
        ):
            return {"recorded": False}
        _append_line(ledger, f"{inv.idempotency_key} {inputs['entry']}")
        return {"recorded": True}

    return handler


async def erase(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    ledger = _ledger(inv, inputs["ledger"])
    if not ledger.exists():
        kept: list[str] = []
        removed = 0
    else:
        lines = ledger.read_text().splitlines()
        kept = [line for line in lines if line.split(" ", 1)[0] != inputs["key"]]
        removed = len(lines) - len(kept)
        ledger.write_text("".join(line + "\n" for line in kept))
    _append_line(_ledger(inv, inputs["ledger"], "erasures"), f"{inputs['key']} {removed}")
    return {"removed": removed}


HANDLERS: dict[str, Handler] = {
    "test.fail": fail,
    "test.ledger.record": _ledger_handler(idempotent=True),
    "test.ledger.append": _ledger_handler(idempotent=False),
    "test.ledger.erase": erase,
}
