"""The audit store: an append-only, hash-chained record of what every workflow did.

SQLAlchemy 2 on SQLite (a file, the default) or PostgreSQL (by URL); the schema is created and upgraded
by Alembic. Each record's hash covers its content and the previous record's hash, so `verify` detects a
record that was edited, deleted or inserted. Inputs are stored as rendered with secret references left
as references (values never reach the store), and secret-looking keys hidden.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Integer, String, Text, create_engine, insert, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

GENESIS = "0" * 64
MIGRATIONS = Path(__file__).with_name("migrations")
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
    kind: Mapped[str] = mapped_column(String(64), index=True)
    namespace: Mapped[str] = mapped_column(String(253), index=True)
    workflow: Mapped[str] = mapped_column(String(253), index=True)
    workflow_uid: Mapped[str] = mapped_column(String(64))
    step: Mapped[str | None] = mapped_column(String(63), nullable=True)
    principal: Mapped[str | None] = mapped_column(String(253), nullable=True)
    actor: Mapped[str | None] = mapped_column(String(253), nullable=True)
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)

    def as_dict(self) -> dict[str, Any]:
        data = {c: getattr(self, c) for c in COLUMNS}
        data["payload"] = json.loads(self.payload)
        return data


def record_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + "\n" + canonical).encode()).hexdigest()


def _hashed_fields(record: AuditRecord) -> dict[str, Any]:
    return {c: getattr(record, c) for c in COLUMNS if c not in ("id", "hash", "prev_hash")}


@dataclass(frozen=True)
class Problem:
    record: int
    message: str


class AuditStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, future=True)
        self._lock = threading.Lock()  # appends are serialised: each needs the previous hash

    def migrate(self) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
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
            last = connection.execute(select(table.c.id, table.c.hash).order_by(table.c.id.desc()).limit(1)).first()
            prev_hash, next_id = (last.hash, last.id + 1) if last else (GENESIS, 1)
            rows = []
            for entry in entries:
                row: dict[str, Any] = {
                    "recorded_at": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                    "kind": entry["kind"],
                    "namespace": entry["namespace"],
                    "workflow": entry["workflow"],
                    "workflow_uid": entry["workflow_uid"],
                    "step": entry.get("step"),
                    "principal": entry.get("principal"),
                    "actor": entry.get("actor"),
                    "payload": json.dumps(entry.get("payload") or {}, sort_keys=True, default=str),
                }
                digest = record_hash(prev_hash, row)  # the same fields verify() hashes
                row["prev_hash"], row["hash"] = prev_hash, digest
                prev_hash = digest
                rows.append(row)
            connection.execute(insert(AuditRecord), rows)  # executemany: one round trip per batch
            return list(range(next_id, next_id + len(rows)))

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
