"""The peer's side of `make bench-peers`: N Temporal workflows of M no-op activities in a chain, run by the
`temporalio` Python SDK against a Temporal CLI dev server (SQLite). Each activity is one durable step of
Temporal's own history, like a checkpointed step of ours. Kept apart from bench/peers.py because Temporal's
workflow sandbox re-imports the module that defines a workflow: it must import nothing but temporalio."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn
async def noop(index: int) -> int:
    return index


@workflow.defn
class Chain:
    @workflow.run
    async def run(self, steps: int) -> int:
        for index in range(steps):
            await workflow.execute_activity(noop, index, start_to_close_timeout=timedelta(seconds=60))
        return steps
