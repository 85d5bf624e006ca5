"""The audit store on SQLite and on a real PostgreSQL server that the tests start themselves; and the
audit trail the operator writes, read back with `airun audit`."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from controller.api.approval import ApprovalPhase
from controller.api.audit import AuditKind
from controller.api.workflow import WorkflowPhase
from controller.audit.store import AuditStore
from controller.audit.writer import AuditWriter
from controller.localcluster.cluster import free_port
from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_governance import decide, wait_phase
from tests.integration.test_saga import steps_of, wait_terminal, wf, write
from tests.kube import Kube


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL server on a free loopback port (Debian's postgresql package; `make test`
    installs it when missing)."""
    binaries = _postgres_bin()
    if binaries is None:
        pytest.fail("PostgreSQL server binaries not found: run tools/ensure-postgres.sh (make test does)")
    # Not under pytest's private temporary folder: the postgres user must be able to reach it.
    base = Path(tempfile.mkdtemp(prefix="airun-pg-"))
    data = base / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    port = free_port()
    subprocess.run(
        [*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {base} -c fsync=off"
    subprocess.run(
        [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditStore]:
    sqlite = f"sqlite:///{tmp_path / 'audit.db'}"
    url = sqlite if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    s = AuditStore(url)
    with s.engine.begin() as c:  # a fresh table (and id sequence) per test
        c.execute(text("DROP TABLE IF EXISTS audit_records"))
        c.execute(text("DROP TABLE IF EXISTS alembic_version"))
    s.migrate()
    yield s
    s.engine.dispose()


def fill(store: AuditStore, count: int = 5) -> None:
    for i in range(count):
        store.append(
            "step.finished",
            namespace="ns",
            workflow="wf",
            workflow_uid="u",
            step=f"s{i}",
            principal="bob",
            payload={"i": i, "outputs": {"path": f"{i}.txt"}},
        )


APPENDER = """
import sys
from controller.audit.store import AuditStore
store = AuditStore(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.append_many([{"kind": "step.finished", "namespace": "ns", "workflow": sys.argv[2], "workflow_uid": "u",
                        "step": f"s{i}", "payload": {"i": i}} for _ in range(2)])
"""


ISOLATED_MIGRATION = """
import sys
from controller.audit.store import AuditStore
store = AuditStore(sys.argv[1])
store.migrate(isolated=True)
assert store.revision() == sys.argv[2], store.revision()
store.append("step.finished", namespace="ns", workflow="wf", workflow_uid="u", payload={})
store.migrate(isolated=True)  # at the newest revision already: nothing runs
print(sorted(m for m in sys.modules if m.split(".")[0] == "alembic"))
"""


def test_the_operator_migrates_in_a_child_process_and_never_loads_alembic(store: AuditStore) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from controller.audit.store import MIGRATIONS, SCHEMA_REVISION

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION  # a new migration: bump it
    with store.engine.begin() as c:  # as before the first start
        c.execute(text("DROP TABLE IF EXISTS audit_records"))
        c.execute(text("DROP TABLE IF EXISTS alembic_version"))
    assert store.revision() is None
    child = subprocess.run(
        [sys.executable, "-c", ISOLATED_MIGRATION, store.url, SCHEMA_REVISION],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "[]"
    assert [r.kind for r in store.records()] == ["step.finished"]


def test_replicas_appending_at_once_keep_one_unbroken_chain(store: AuditStore) -> None:
    """Several operator replicas (--shards) append to one store: each append reads the last hash and
    writes after it, so appends must be serialised across processes, not only threads."""
    writers = [
        subprocess.Popen([sys.executable, "-c", APPENDER, store.url, f"r{n}", "60"], stderr=subprocess.PIPE)
        for n in range(3)
    ]
    for writer in writers:
        _, errors = writer.communicate(timeout=120)
        assert writer.returncode == 0, errors.decode()[-2000:]
    records = list(store.records())
    assert len(records) == 3 * 60 * 2
    assert store.verify() == []
    assert not [r for r in records if "not storable" in r.payload]


def test_chain_verifies_and_exports(store: AuditStore) -> None:
    fill(store)
    assert store.verify() == []
    lines = store.export("jsonl").splitlines()
    assert len(lines) == 5 and json.loads(lines[2])["payload"]["i"] == 2
    assert store.export("csv").splitlines()[0].startswith("id,recorded_at,kind")


def test_durable_returns_once_the_records_are_in_the_store(store: AuditStore) -> None:
    """Write-ahead: the runner awaits this before each status checkpoint."""
    writer = AuditWriter(store)

    async def record_then_wait() -> int:
        for i in range(200):
            writer.record(
                AuditKind.STEP_FINISHED, namespace="ns", workflow="wf", workflow_uid="u", step=f"s{i}", payload={}
            )
        await writer.durable()
        return sum(1 for _ in store.records())

    try:
        assert asyncio.run(record_then_wait()) == 200
    finally:
        writer.close()


def test_runs_of_the_same_workflow_name_are_told_apart(store: AuditStore) -> None:
    for uid in ("3f2a-first", "9c1b-second"):
        store.append("workflow.started", namespace="ns", workflow="wf", workflow_uid=uid, principal="bob", payload={})
    assert [r.workflow_uid for r in store.records(workflow="wf", run="9c1b")] == ["9c1b-second"]
    assert list(store.records(workflow="wf", run="%")) == []  # a prefix, not a pattern
    store.append(
        "approval.decided", namespace="ns", workflow="wf", workflow_uid="9c1b-second", actor="alice", payload={}
    )
    assert [r.kind for r in store.records(kinds=["approval"])] == ["approval.decided"]  # a family
    assert [r.kind for r in store.records(kinds=["workflow.started"])] == ["workflow.started"] * 2
    assert list(store.records(kinds=["approval.dec"])) == []  # neither a kind nor a family


def test_edited_record_is_detected(store: AuditStore) -> None:
    fill(store)
    with store.engine.begin() as c:
        c.execute(text("UPDATE audit_records SET actor = 'mallory' WHERE step = 's2'"))
    problems = store.verify()
    assert [p.record for p in problems] == [3] and "edited" in problems[0].message, problems


def test_deleted_record_is_detected(store: AuditStore) -> None:
    fill(store)
    with store.engine.begin() as c:
        c.execute(text("DELETE FROM audit_records WHERE step = 's1'"))
    messages = " ".join(p.message for p in store.verify())
    assert "missing" in messages and "does not follow" in messages


def test_inserted_record_is_detected(store: AuditStore) -> None:
    fill(store, 2)
    with store.engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO audit_records "
                "(recorded_at, kind, namespace, workflow, workflow_uid, payload, prev_hash, hash) "
                "VALUES ('2026-01-01T00:00:00Z', 'approval.decided', 'ns', 'wf', 'u', '{}', 'x', 'forged')"
            )
        )
    fill(store, 1)
    assert any("does not follow" in p.message for p in store.verify())


def airun(*args: str, env: DevEnvironment) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "AIRUN_AUDIT_URL": env.audit_url},
    )


def test_the_trail_answers_who_approved_and_what_ran(kube: Kube, namespace: str, operator: DevEnvironment) -> None:
    kube.apply(
        wf(
            "audited-run",
            write("a", "a.txt"),
            {"name": "gate", "type": "Approval", "dependsOn": ["a"]},
            write("b", "b.txt", ("gate",)),
        ),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_phase(kube, namespace, "audited-run", WorkflowPhase.AWAITING_APPROVAL)
    assert decide(kube, namespace, steps_of(obj)["gate"]["approval"], ApprovalPhase.APPROVED, "alice")[0] == 0
    wait_terminal(kube, namespace, "audited-run")
    operator.stop_operator()  # flushes the writer; the next test gets a fresh operator
    operator.start_operator()
    store = AuditStore(operator.audit_url)
    records = [r.as_dict() for r in store.records(namespace=namespace, workflow="audited-run")]
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "workflow.started" and kinds[-1] == "workflow.finished"
    decided = next(r for r in records if r["kind"] == "approval.decided")
    assert decided["actor"] == "alice" and decided["principal"] == "bob" and decided["step"] == "gate"
    ran = [r for r in records if r["kind"] == "step.started"]
    assert [(r["step"], r["payload"]["inputs"]["path"]) for r in ran] == [("a", "a.txt"), ("b", "b.txt")]
    assert all(r["principal"] == "bob" for r in records)
    assert store.verify() == []

    shown = airun("audit", "show", "--namespace", namespace, "--workflow", "audited-run", env=operator)
    assert shown.returncode == 0 and "approval.decided" in shown.stdout and "alice" in shown.stdout
    assert airun("audit", "verify", env=operator).returncode == 0
    exported = airun("audit", "export", "--format", "jsonl", "-n", namespace, env=operator)
    assert len(exported.stdout.splitlines()) == len(records)


def test_a_runs_deletion_request_is_found_through_an_index(store: AuditStore) -> None:
    """The runner asks for it whenever it resumes a deletion: on a trail of millions of records, a scan
    would hold up every such workflow (migration 0003)."""
    store.append("workflow.deletion_requested", namespace="ns", workflow="wf", workflow_uid="u1", actor="bob")
    fill(store)
    assert store.deletion_actor("u1") == "bob"
    with store.engine.connect() as c:
        if c.dialect.name == "sqlite":
            plan = c.execute(text("EXPLAIN QUERY PLAN SELECT actor FROM audit_records WHERE workflow_uid = 'u1'"))
            assert "ix_audit_records_workflow_uid" in " ".join(str(row[-1]) for row in plan)
        else:
            names = c.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'audit_records'"))
            assert "ix_audit_records_workflow_uid" in {row[0] for row in names}


def test_the_sqlite_store_commits_through_a_write_ahead_log(store: AuditStore) -> None:
    if not store.url.startswith("sqlite"):
        pytest.skip("SQLite only")
    with store.engine.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert c.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL: every commit is on disk
