"""sys.* handlers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from controller.capabilities.base import Handler, Invocation


async def sleep(inputs: dict[str, Any], _: Invocation) -> dict[str, Any]:
    started = time.monotonic()
    await asyncio.sleep(float(inputs["seconds"]))
    return {"slept": round(time.monotonic() - started, 3)}


HANDLERS: dict[str, Handler] = {"sys.sleep": sleep}
