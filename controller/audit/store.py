"""The audit store: an append-only, hash-chained record of what every workflow did.

SQLAlchemy 2 on SQLite (a file, the default) or PostgreSQL (by URL); the schema is created and upgraded
by Alembic. Each record's hash covers its content and the previous record's hash, so `verify` detects a
record that was edited, deleted or inserted. Inputs are stored as rendered with secret references left
as references (values never reach the store), and secret-looking keys hidden.

Records are bounded: a payload value larger than VALUE_LIMIT bytes is stored as its digest, its size and
a preview (a 10 MiB response body must not fill the volume), and a record still larger than RECORD_LIMIT
has its largest values digested in turn. The hash chain covers what is stored. A record that cannot be
stored as it is (a value JSON cannot encode, a NUL byte PostgreSQL refuses) is stored as a stub that says
what was wrong: a bad record never costs the good ones of its batch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, String, Text, create_engine, event, insert, or_, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from controller.api.audit import AuditKind

log = logging.getLogger("airun.audit")
GENESIS = "0" * 64
VALUE_LIMIT = 4 * 1024  # bytes of one payload value (its JSON) before it is stored as a digest
RECORD_LIMIT = 64 * 1024  # bytes of one record's payload (its JSON)
PREVIEW_CHARS = 256
KIND_LENGTH = 64
MIGRATIONS = Path(__file__).with_name("migrations")
# The newest Alembic revision in MIGRATIONS (a test checks it is Alembic's head): a store already there
# is not migrated, and the operator's process never imports Alembic (about 11 MiB).
SCHEMA_REVISION = "0003"
URL_VARIABLE = "AIRUN_AUDIT_URL_TO_MIGRATE"  # the child process's URL: not in its command line (passwords)
COLUMNS = (
    "id",
    "recorded_at",
    "kind",
    "namespace",
    "workflow",
    "workflow_uid",
    "step",
    "principal",
    "actor",
    "payload",
    "prev_hash",
    "hash",
)


class Base(DeclarativeBase):
    pass


class AuditRecord(Base):
    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    recorded_at: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(KIND_LENGTH), index=True)
    namespace: Mapped[str] = mapped_column(String(253), index=True)
    # Text, not VARCHAR: user names (principal, actor) have no length limit in Kubernetes (migration 0002).
    workflow: Mapped[str] = mapped_column(Text, index=True)
    workflow_uid: Mapped[str] = mapped_column(String(64), index=True)  # migration 0003
    step: Mapped[str | None] = mapped_column(Text, nullable=True)
    principal: Mapped[str | None] = mapped_column(Text, nullable=True)
    actor: Mapped[str | None] = mapped_column(Text, nullable=True)
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)

    def as_dict(self) -> dict[str, Any]:
        data = {c: getattr(self, c) for c in COLUMNS}
        data["payload"] = json.loads(self.payload)
        return data


def _row(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "recorded_at": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "kind": _column(entry["kind"]),
        "namespace": _column(entry["namespace"]),
        "workflow": _column(entry["workflow"]),
        "workflow_uid": _column(entry["workflow_uid"]),
        "step": _column(entry.get("step")),
        "principal": _column(entry.get("principal")),
        "actor": _column(entry.get("actor")),
        "payload": json.dumps(bound_payload(dict(entry.get("payload") or {})), sort_keys=True, default=str),
    }


def record_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + "\n" + canonical).encode()).hexdigest()


def _hashed_fields(record: AuditRecord) -> dict[str, Any]:
    return {c: getattr(record, c) for c in COLUMNS if c not in ("id", "hash", "prev_hash")}


def digest_of(text: str) -> dict[str, Any]:
    """What a value too large to store becomes: enough to recognise it, never the whole of it."""
    data = text.encode("utf-8", "surrogatepass")
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "preview": text[:PREVIEW_CHARS]}


def _encoded(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _bound_value(value: Any) -> Any:
    """VALUE with every part whose JSON exceeds VALUE_LIMIT replaced by its digest (strings by their
    own text, containers part by part, so the small fields of a large output stay readable)."""
    if isinstance(value, str):
        return digest_of(value) if len(value) > VALUE_LIMIT // 4 and len(value.encode()) > VALUE_LIMIT else value
    if isinstance(value, dict):
        return {str(k): _bound_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        bounded = [_bound_value(v) for v in value]
        encoded = _encoded(bounded)
        return digest_of(encoded) if len(encoded.encode()) > RECORD_LIMIT else bounded
    return value


def bound_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """PAYLOAD as it is stored: large values digested, then the largest top-level values digested until
    the whole fits RECORD_LIMIT. Raises TypeError/ValueError when it cannot be encoded at all."""
    bounded = {str(k): _bound_value(v) for k, v in payload.items()}
    sizes = {k: len(_encoded(v).encode()) for k, v in bounded.items()}
    total = len(_encoded(bounded).encode())
    for key in sorted(sizes, key=lambda k: -sizes[k]):
        if total <= RECORD_LIMIT:
            break
        bounded[key] = digest_of(_encoded(bounded[key]))
        total = len(_encoded(bounded).encode())
    return bounded


def _column(value: Any) -> str | None:
    """A column value every database stores: text without NUL (PostgreSQL refuses NUL in text)."""
    if value is None:
        return None
    return str(value).replace("\x00", "\N{REPLACEMENT CHARACTER}")


def stub_entry(entry: dict[str, Any], error: str) -> dict[str, Any]:
    """What is stored for ENTRY when it cannot be stored as it is: who, what and why, never silence."""
    fields = ("namespace", "workflow", "workflow_uid", "step", "principal", "actor")
    stub: dict[str, Any] = {f: _column(entry.get(f)) for f in fields}
    stub["namespace"] = (stub["namespace"] or "")[:253]
    stub["workflow"], stub["workflow_uid"] = stub["workflow"] or "", (stub["workflow_uid"] or "")[:64]
    kind = _column(entry.get("kind")) or "unknown"
    stub["kind"] = kind[:KIND_LENGTH]
    stub["payload"] = {"unstorable": True, "kind": kind, "error": error[:1000]}
    return stub


@dataclass(frozen=True)
class Problem:
    record: int
    message: str


# Every append holds this PostgreSQL advisory lock (for its transaction): each needs the previous hash, and
# replicas of the operator (--shards) append from several processes.
APPEND_LOCK = 0x61697275_6E617564  # "airunaud"


def _serialise_sqlite_writers(engine: Engine) -> None:
    """SQLite: every transaction starts with BEGIN IMMEDIATE, which takes the file's write lock at once
    (other processes wait for it, up to the connection timeout), instead of pysqlite's deferred BEGIN, with
    which two processes could both read the same last hash before either writes."""

    @event.listens_for(engine, "connect")
    def no_implicit_begin(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None
        # Write-ahead log: a commit is one fsync of the log instead of a rollback journal created, synced
        # and deleted (the runner waits for it before every checkpoint: 3.5 -> 2.1 ms per batch measured).
        # Durable still (synchronous=FULL, SQLite's default); a copy must take audit.db-wal along.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")

    @event.listens_for(engine, "begin")
    def begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class AuditStore:
    def __init__(self, url: str) -> None:
        self.url = url
        sqlite = url.startswith("sqlite")
        self.engine: Engine = create_engine(url, future=True, **({"connect_args": {"timeout": 30}} if sqlite else {}))
        if sqlite:
            _serialise_sqlite_writers(self.engine)
        self._lock = threading.Lock()  # appends are serialised: each needs the previous hash

    def revision(self) -> str | None:
        """The schema's Alembic revision, None before the first migration."""
        with self.engine.connect() as connection:
            try:
                return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except DBAPIError:  # no such table (SQLite and PostgreSQL raise different subclasses)
                return None

    def migrate(self, isolated: bool = False) -> None:
        """Create or upgrade the schema, unless it is SCHEMA_REVISION already. ISOLATED: in a child process,
        so that Alembic is not loaded into this one for good (the operator's)."""
        if self.revision() == SCHEMA_REVISION:
            return
        if not isolated:
            self._upgrade()
            return
        child = subprocess.run(
            [sys.executable, "-m", "controller.audit.store"],
            env={**os.environ, URL_VARIABLE: self.url},
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            raise RuntimeError(f"migrating the audit store failed: {child.stderr.strip()[-2000:]}")

    def _upgrade(self) -> None:
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":  # replicas starting together migrate one at a time
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def append(
        self,
        kind: str,
        *,
        namespace: str,
        workflow: str,
        workflow_uid: str,
        step: str | None = None,
        principal: str | None = None,
        actor: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> int:
        entry = {
            "kind": kind,
            "namespace": namespace,
            "workflow": workflow,
            "workflow_uid": workflow_uid,
            "step": step,
            "principal": principal,
            "actor": actor,
            "payload": payload,
        }
        return self.append_many([entry])[-1]

    def append_many(self, entries: list[dict[str, Any]]) -> list[int]:
        """Appends ENTRIES (the keyword arguments of append) in order, in one transaction; their ids."""
        table = AuditRecord.__table__
        with self._lock, self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":  # other processes too (SQLite: BEGIN IMMEDIATE)
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPEND_LOCK})
            last = connection.execute(select(table.c.id, table.c.hash).order_by(table.c.id.desc()).limit(1)).first()
            prev_hash, next_id = (last.hash, last.id + 1) if last else (GENESIS, 1)
            rows: list[dict[str, Any]] = []
            for entry in entries:
                try:
                    row = _row(entry)
                except (TypeError, ValueError, RecursionError) as error:  # JSON cannot encode it
                    row = _row(stub_entry(entry, f"payload not storable: {type(error).__name__}: {error}"))
                digest = record_hash(prev_hash, row)  # the same fields verify() hashes
                row["prev_hash"], row["hash"] = prev_hash, digest
                # Explicit ids: a failed transaction would burn PostgreSQL sequence values, and a gap in
                # the ids reads as deleted records to verify().
                row["id"] = next_id + len(rows)
                prev_hash = digest
                rows.append(row)
            connection.execute(insert(AuditRecord), rows)  # executemany: one round trip per batch
            if connection.dialect.name == "postgresql":  # keep the id sequence in step with the explicit ids
                connection.execute(
                    text("SELECT setval(pg_get_serial_sequence('audit_records', 'id'), :id)"),
                    {"id": next_id + len(rows) - 1},
                )
            return list(range(next_id, next_id + len(rows)))

    def append_isolated(self, entries: list[dict[str, Any]]) -> tuple[list[int], int]:
        """Appends ENTRIES in one transaction; when that fails, one by one, and a record that still fails
        as a stub saying why, so one bad record never costs the others. Returns the ids written and how
        many records were lost: when even a stub cannot be written the store itself is down, and the
        rest of the batch is not tried again (the writer must not stall on a dead store)."""
        try:
            return self.append_many(entries), 0
        except Exception:
            log.warning("a batch of %d audit records failed; writing them one by one", len(entries))
        ids: list[int] = []
        for position, entry in enumerate(entries):
            try:
                ids += self.append_many([entry])
                continue
            except Exception as error:
                reason = f"record not storable: {type(error).__name__}: {str(error)[:500]}"
            try:
                ids += self.append_many([stub_entry(entry, reason)])
                log.warning("audit record %s stored as a stub: %s", entry.get("kind"), reason)
            except Exception:
                log.exception("the audit store refuses even a stub: it is down")
                return ids, len(entries) - position
        return ids, 0

    def deletion_actor(self, workflow_uid: str) -> str | None:
        """Who asked last for the deletion of the workflow run WORKFLOW_UID, as the DELETE webhook recorded it
        (on whichever replica served it, before any restart)."""
        with Session(self.engine) as session:
            query = (
                select(AuditRecord.actor)
                .where(AuditRecord.workflow_uid == workflow_uid)
                .where(AuditRecord.kind == str(AuditKind.WORKFLOW_DELETION_REQUESTED))
                .order_by(AuditRecord.id.desc())
                .limit(1)
            )
            return session.scalars(query).first()

    def records(
        self,
        *,
        namespace: str | None = None,
        workflow: str | None = None,
        run: str | None = None,
        kinds: Sequence[str] = (),
    ) -> Iterator[AuditRecord]:
        """The records, oldest first; RUN picks one run of a workflow by (a prefix of) its uid; KINDS are
        kinds (approval.decided) or families (approval)."""
        with Session(self.engine) as session:
            query = select(AuditRecord).order_by(AuditRecord.id)
            if namespace:
                query = query.where(AuditRecord.namespace == namespace)
            if workflow:
                query = query.where(AuditRecord.workflow == workflow)
            if run:
                query = query.where(AuditRecord.workflow_uid.startswith(run, autoescape=True))
            if kinds:
                query = query.where(
                    or_(
                        *(AuditRecord.kind == k for k in kinds),
                        *(AuditRecord.kind.startswith(f"{k}.", autoescape=True) for k in kinds),
                    )
                )
            yield from session.scalars(query)

    def verify(self) -> list[Problem]:
        """Walks the chain. An edited record breaks its own hash; a deleted or inserted one breaks the
        link of the record after it (and leaves a gap in the ids)."""
        problems: list[Problem] = []
        prev_hash, prev_id = GENESIS, 0
        for record in self.records():
            if record.id != prev_id + 1:
                problems.append(Problem(record.id, f"records {prev_id + 1}..{record.id - 1} are missing"))
            if record.prev_hash != prev_hash:
                problems.append(Problem(record.id, "does not follow the record before it (deleted or inserted)"))
            if record_hash(record.prev_hash, _hashed_fields(record)) != record.hash:
                problems.append(Problem(record.id, "content does not match its hash (edited)"))
            prev_hash, prev_id = record.hash, record.id
        return problems

    def export(self, fmt: str, **filters: Any) -> str:
        rows = [r.as_dict() for r in self.records(**filters)]
        if fmt == "jsonl":
            return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        if fmt == "csv":
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=list(COLUMNS))
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, "payload": json.dumps(row["payload"], sort_keys=True)})
            return out.getvalue()
        raise ValueError(f"unknown format {fmt!r} (jsonl or csv)")


if __name__ == "__main__":  # AuditStore.migrate(isolated=True)
    AuditStore(os.environ[URL_VARIABLE]).migrate()
