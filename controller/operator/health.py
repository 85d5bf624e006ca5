"""Liveness and readiness endpoints: /healthz answers while the event loop runs; /readyz once kopf has
started watching (its indexes of policies, approvals and capabilities are then being filled)."""

from __future__ import annotations

import asyncio

from aiohttp import web


async def serve(address: str, port: int, ready: asyncio.Event) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response({"ready": ready.is_set()}, status=200 if ready.is_set() else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner
