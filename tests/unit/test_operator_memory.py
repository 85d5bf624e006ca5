"""What the operator holds per running workflow and per connection (issue 14: 1,000 workflows at once
under 150 MiB). `make bench` measures the whole; these check each saving is in place."""

from __future__ import annotations

import asyncio
import ssl
import tracemalloc
from asyncio import sslproto
from pathlib import Path

from controller.api.workflow import UNTRACKED, Condition, StepPhase, WorkflowStatus
from controller.operator import kube

STATUS = {
    "phase": "Running",
    "principal": "bob",
    "steps": [
        {
            "name": "s0",
            "phase": "Succeeded",
            "attempts": 1,
            "idempotencyKey": "k0",
            "decision": "ALLOW",
            "policy": "ClusterPolicy baseline rule 0: ALLOW",
            "compensation": {
                "phase": "Pending",
                "capability": "io.fs.restore",
                "inputs": {"snapshot": "k0"},
                "attempts": 0,
            },
        },
        {"name": "s1", "phase": "Running", "attempts": 1, "idempotencyKey": "k1"},
    ],
    "conditions": [
        {
            "type": t,
            "status": "False",
            "reason": "Running",
            "message": "",
            "lastTransitionTime": "2026-12-02T06:07:35.042Z",
            "observedGeneration": 1,
        }
        for t in ("Completed", "Succeeded", "AwaitingApproval", "Ready", "Reconciling", "Stalled")
    ],
}


def test_status_models_keep_no_set_of_given_fields() -> None:
    status = WorkflowStatus.model_validate(STATUS)
    parts = [status, *status.steps, *status.conditions, status.steps[0].compensation]
    assert all(part.__pydantic_fields_set__ is UNTRACKED for part in parts)
    copied = status.model_copy(deep=True)
    assert copied.steps[0].__pydantic_fields_set__ is UNTRACKED
    copied.steps[1].phase = StepPhase.SUCCEEDED  # pydantic's record of the assignment goes nowhere
    assert copied.steps[1].model_fields_set == frozenset()
    assert status.steps[1].phase is StepPhase.RUNNING  # the deep copy shares no state with the original
    assert copied.model_copy(update={"progress": "2/2"}).progress == "2/2"
    assert status.dump() == STATUS  # what the API server gets is unchanged
    assert WorkflowStatus.model_validate(status.dump()) == status


def test_a_condition_takes_less_than_half_a_kibibyte() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        held = [Condition.model_validate(STATUS["conditions"][0]) for _ in range(1000)]  # type: ignore[index]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_condition = sum(d.size_diff for d in after.compare_to(before, "lineno")) / len(held)
    assert per_condition < 512, per_condition  # 1,088 bytes with pydantic's set of the six given fields


def test_tls_connections_read_into_64_kib_buffers() -> None:
    original = sslproto.SSLProtocol.max_size
    try:
        kube.smaller_tls_read_buffers()
        loop = asyncio.new_event_loop()
        try:
            protocol = sslproto.SSLProtocol(
                loop, asyncio.Protocol(), ssl.create_default_context(), loop.create_future()
            )
            assert len(protocol._ssl_buffer) == 64 * 1024  # asyncio's own: 256 KiB, zero-filled, resident
        finally:
            loop.close()
    finally:
        sslproto.SSLProtocol.max_size = original


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_the_client_pool_is_bounded_and_the_leases_have_their_own(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG)

    async def check() -> None:
        connection = await kube.connect(str(config), "x")
        try:
            assert connection.api.rest_client.pool_manager.connector.limit == kube.POOL_CONNECTIONS
            leases = connection.separate_pool()
            assert leases.rest_client.pool_manager is not connection.api.rest_client.pool_manager
        finally:
            await connection.close()
        assert leases.rest_client.pool_manager.closed  # closed with the connection

    asyncio.run(check())
