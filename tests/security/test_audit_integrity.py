"""Attacks on the audit trail: a payload that fills the volume, a record that drops its whole batch, a
principal too long for the store, a decision lost between its audit record and its status write."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from controller.api.audit import AuditKind
from controller.api.workflow import WorkflowPhase
from controller.audit.store import AuditStore
from controller.audit.writer import AuditWriter
from controller.localcluster.devenv import DevEnvironment
from controller.operator import approvals, handlers
from tests.integration.test_audit import postgres_url, store  # noqa: F401  (fixtures: SQLite and PostgreSQL)
from tests.integration.test_saga import steps_of, wait_terminal, wf
from tests.kube import Kube

BIG = 10 * 1024 * 1024
RECORD_LIMIT = 64 * 1024  # what one stored record may take at most (controller.audit.store)


@pytest.fixture
def ten_mib_server() -> Iterator[tuple[str, str]]:
    """A loopback server whose every answer is a 10 MiB text body; (url, body)."""
    body = ("0123456789abcdef" * (BIG // 16))[:BIG]
    data = body.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/big", body
    finally:
        server.shutdown()


def test_huge_output_fills_the_audit_volume_bounded_to_a_digest(
    kube: Kube, namespace: str, operator: DevEnvironment, ten_mib_server: tuple[str, str]
) -> None:
    url, body = ten_mib_server
    step = {"name": "fetch", "capability": "net.http.get", "inputs": {"url": url, "maxResponseBytes": BIG}}
    kube.apply(wf("huge", step), namespace=namespace)
    obj = wait_terminal(kube, namespace, "huge", timeout=90)
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED, obj["status"]
    assert len(json.dumps(steps_of(obj)["fetch"].get("outputs") or {})) < RECORD_LIMIT  # status stays small
    records = [r.as_dict() for r in AuditStore(operator.audit_url).records(namespace=namespace, workflow="huge")]
    finished = next(r for r in records if r["kind"] == "step.finished")
    assert len(json.dumps(finished["payload"])) <= RECORD_LIMIT
    stored = finished["payload"]["outputs"]["body"]
    assert stored == {"sha256": hashlib.sha256(body.encode()).hexdigest(), "bytes": BIG, "preview": body[:256]}
    assert finished["payload"]["outputs"]["status"] == 200  # the small fields stay as they were


def test_one_unstorable_record_drops_its_whole_batch(store: AuditStore) -> None:  # noqa: F811
    circular: dict[str, Any] = {}
    circular["self"] = circular
    good = {"namespace": "ns", "workflow": "wf", "workflow_uid": "u1"}
    writer = AuditWriter(store)
    # Holding the store's lock keeps the writer from writing: what is queued meanwhile is one batch.
    with store._lock:
        writer.record(AuditKind.STEP_STARTED, step="one", payload={"n": 1}, **good)
        writer.record(AuditKind.STEP_STARTED, step="bad", payload={"loop": circular}, **good)  # JSON cannot encode it
        writer.record(AuditKind.STEP_STARTED, step="nul\x00byte", payload={"n": 3}, **good)  # PostgreSQL refuses NUL
        writer.record(AuditKind.STEP_FINISHED, step="two", payload={"n": 4}, **good)
        writer.record("k" * 100, step="long-kind", payload={"n": 5}, **good)  # over VARCHAR(64) on PostgreSQL
        writer.record(AuditKind.STEP_FINISHED, step="three", payload={"n": 6}, **good)

    async def flush() -> None:
        await writer.durable()

    asyncio.run(flush())
    writer.close()
    records = [r.as_dict() for r in store.records()]
    assert [r["step"] for r in records] == [
        "one",
        "bad",
        "nul\N{REPLACEMENT CHARACTER}byte",
        "two",
        "long-kind",
        "three",
    ]
    assert [r["payload"].get("n") for r in records if r["step"] != "long-kind"] == [1, None, 3, 4, 6]
    stub = records[1]
    assert stub["payload"]["unstorable"] is True and stub["payload"]["kind"] == "step.started"
    assert "not storable" in stub["payload"]["error"]
    long_kind = records[4]  # SQLite stores it; PostgreSQL refuses it, so it is kept as a stub saying why
    assert long_kind["payload"] == {"n": 5} or long_kind["payload"]["unstorable"] is True
    assert writer.failures == 0
    assert store.verify() == []


def test_long_principal_overflows_the_store(
    kube: Kube,
    namespace: str,
    operator: DevEnvironment,
    postgres_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    # Kubernetes puts no limit on user names: an OIDC subject or a proxy can send 400 characters.
    user = "system:serviceaccount:" + namespace + ":" + "a" * (400 - len(namespace) - 23)
    assert len(user) == 400
    manifest = wf("long-principal", {"name": "a", "capability": "sys.sleep", "inputs": {"seconds": 0}})
    kube.run(
        "--as", user, "--as-group", "system:masters", "apply", "-n", namespace, "-f", "-", stdin=json.dumps(manifest)
    )
    obj = wait_terminal(kube, namespace, "long-principal")
    assert obj["status"]["principal"] == user and obj["status"]["phase"] == WorkflowPhase.SUCCEEDED
    trail = [r.as_dict() for r in AuditStore(operator.audit_url).records(namespace=namespace)]
    assert trail and all(r["principal"] == user for r in trail)
    # The same records in PostgreSQL, the production store (VARCHAR(253) refused them).
    production = AuditStore(postgres_url)
    production.migrate()
    fields = ("kind", "namespace", "workflow", "workflow_uid", "step", "principal", "actor", "payload")
    ids = production.append_many([{f: r[f] for f in fields} for r in trail])
    stored = [r.as_dict() for r in production.records(namespace=namespace)]
    assert len(stored) == len(ids) == len(trail) and all(r["principal"] == user for r in stored)
    assert production.verify() == []


def test_approval_decided_lost_when_killed_after_the_status_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision's audit record must be durable before the Approval's status says it was decided: an
    operator killed between the two then records it again after the restart (visible as a repeat of the
    same approvalUid and generation), never loses it."""
    audit_store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    audit_store.migrate()
    seen_at_status_write: list[list[str]] = []

    async def record_decision(connection: Any, namespace: str, name: str, *args: Any) -> dict[str, Any]:
        # This is where a SIGKILL would strike: what is in the store by now?
        seen_at_status_write.append([r.kind for r in audit_store.records()])
        return {"metadata": {"name": name, "namespace": namespace}, "spec": {}, "status": {"phase": "Approved"}}

    uid = str(uuid.uuid4())
    body = {
        "metadata": {
            "name": "deploy-gate",
            "namespace": "ns",
            "uid": "approval-uid",
            "generation": 2,
            "annotations": {"aifirst.dev/decided-by": "alice"},
            "ownerReferences": [{"kind": "Workflow", "uid": uid, "name": "deploy"}],
        },
        "spec": {"workflow": "deploy", "step": "gate", "requestedBy": "bob", "decision": "Approved"},
        "status": {"phase": "Pending"},
    }
    writer = AuditWriter(audit_store)
    runtime = SimpleNamespace(audit=writer, connection=None, notifier=None, metrics=SimpleNamespace())
    monkeypatch.setattr(approvals, "record_decision", record_decision)
    monkeypatch.setattr(approvals, "announce", lambda *args: None)
    try:
        asyncio.run(handlers.record_approval_decision(runtime, body, "ns", body["spec"]))  # type: ignore[arg-type]
    finally:
        writer.close()
    assert seen_at_status_write == [["approval.decided"]]
    decided = next(audit_store.records()).as_dict()
    assert decided["actor"] == "alice" and decided["principal"] == "bob" and decided["workflow_uid"] == uid
    assert decided["payload"]["approvalUid"] == "approval-uid" and decided["payload"]["generation"] == 2
