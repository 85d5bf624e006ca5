"""`airun audit show|export|verify`: read and check the audit trail, straight from its store."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from controller.cli import state_dir

console = Console(stderr=True)


def _audit_url(url: str | None) -> str:
    """The store to read; a SQLite file must exist (reading one must not create an empty one)."""
    from sqlalchemy.engine import make_url

    url = url or f"sqlite:///{state_dir().resolve() / 'audit.db'}"
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        raise click.ClickException(
            f"no audit store at {parsed.database} (the operator creates it: `airun up`, or its --audit-url)"
        )
    return url


class _AuditGroup(click.Group):
    """A store that cannot be opened or read is one clear line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return super().invoke(ctx)
        except (SQLAlchemyError, ImportError) as error:
            cause = getattr(error, "orig", None) or error
            raise click.ClickException(
                f"cannot use the audit store: {str(cause).strip().splitlines()[0]} "
                "(--db sqlite:///PATH or postgresql+psycopg://USER@HOST/DB; default .airun/audit.db)"
            ) from error


@click.group(cls=_AuditGroup)
def audit() -> None:
    """Read and check the audit trail (who did what, who approved, what ran)."""


_audit_db = click.option(
    "--db", "url", envvar="AIRUN_AUDIT_URL", help="SQLAlchemy URL of the audit store (default: .airun/audit.db)."
)
_audit_filters = [
    click.option("-n", "--namespace", help="Only this namespace."),
    click.option("-w", "--workflow", help="Only this workflow."),
    click.option("--run", help="Only this run of it: its uid, or the first characters (the `run` column)."),
    click.option(
        "--kind",
        "kinds",
        multiple=True,
        help="Only these kinds of record (repeat): a kind such as approval.decided, or a family such as approval.",
    ),
]


def _filters(function: Any) -> Any:
    for option in reversed(_audit_filters):
        function = option(function)
    return _audit_db(function)


@audit.command("show")
@_filters
def audit_show(
    url: str | None, namespace: str | None, workflow: str | None, run: str | None, kinds: tuple[str, ...]
) -> None:
    """The records as a table, oldest first (columns a filter fixes are left out)."""
    from rich.table import Table

    from controller.audit.store import AuditStore

    shown = {"workflow": not (namespace and workflow), "run": not run}
    table = Table(show_lines=False)
    for column in ("#", "time", "kind", "workflow", "run", "step", "principal", "actor", "details"):
        if shown.get(column, True):
            table.add_column(column, overflow="fold", no_wrap=column not in ("workflow", "details"))
    for record in AuditStore(_audit_url(url)).records(namespace=namespace, workflow=workflow, run=run, kinds=kinds):
        payload = json.loads(record.payload)
        # The table is for reading: empty and false values and the long idempotency keys are in `export`.
        details = ", ".join(
            f"{k}={json.dumps(v)}"
            for k, v in payload.items()
            if v not in (None, [], {}, False) and k != "idempotencyKey"
        )
        cells = {
            "workflow": f"{record.namespace}/{record.workflow}",
            "run": record.workflow_uid[:8],
        }
        table.add_row(
            str(record.id),
            record.recorded_at[:23].replace("T", " "),
            record.kind,
            *[cells[c] for c in ("workflow", "run") if shown[c]],
            record.step or "",
            record.principal or "",
            record.actor or "",
            details,
        )
    if not table.row_count:
        filters = (("namespace", namespace), ("workflow", workflow), ("run", run), ("kind", ",".join(kinds)))
        where = " ".join(f"{k} {v}" for k, v in filters if v)
        console.print(f"no audit records{' for ' + where if where else ''} in {_audit_url(url)}")
        return
    # Piped output (grep, files) gets full lines instead of a table folded to 80 columns, unless COLUMNS says.
    Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 400).print(table)


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@_filters
def audit_export(
    fmt: str, url: str | None, namespace: str | None, workflow: str | None, run: str | None, kinds: tuple[str, ...]
) -> None:
    """Every record, as JSON Lines or CSV, on standard output."""
    from controller.audit.store import AuditStore

    click.echo(
        AuditStore(_audit_url(url)).export(fmt, namespace=namespace, workflow=workflow, run=run, kinds=kinds), nl=False
    )


@audit.command("verify")
@_audit_db
def audit_verify(url: str | None) -> None:
    """Check the hash chain: exits 1, naming the records, when any was edited, deleted or inserted."""
    from controller.audit.store import AuditStore

    store = AuditStore(_audit_url(url))
    problems = store.verify()
    count = sum(1 for _ in store.records())
    if problems:
        for problem in problems:
            console.print(f"[red]record {problem.record}[/]: {problem.message}")
        raise SystemExit(1)
    console.print(f"[green]ok[/]: {count} records, hash chain intact")


COMMANDS: list[click.Command] = [audit]
