"""The `airun` command."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

console = Console(stderr=True)


def _state_dir() -> Path:
    return Path(os.environ.get("AIRUN_STATE_DIR", ".airun"))


class _Airun(click.Group):
    """Turns "the API server cannot be reached" into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from urllib3.exceptions import HTTPError

        try:
            return super().invoke(ctx)
        except HTTPError as error:
            cause = getattr(error, "reason", None) or error
            raise click.ClickException(
                f"cannot reach the API server: {cause} (is it running? `airun up` starts the local one; "
                "--kubeconfig/--context choose another)"
            ) from error


@click.group(cls=_Airun, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="airun")
def main() -> None:
    """AI-First Runtime: the transactional control plane for AI agents."""


@main.command(short_help="Start the local control plane and the operator.")
@click.option("--no-operator", is_flag=True, help="Start the control plane only.")
def up(no_operator: bool) -> None:
    """Start the local control plane and the operator (idempotent: starts only what is not running)."""
    from controller.localcluster.cluster import StartError
    from controller.localcluster.devenv import DevEnvironment

    env = DevEnvironment(_state_dir())
    try:
        timing = env.up(operator=not no_operator)
    except StartError as error:
        raise click.ClickException(str(error)) from error
    console.print(
        f"[green]up[/] control plane {timing.control_plane:.1f} s, manifests {timing.manifests:.1f} s, "
        f"operator {timing.operator:.1f} s"
    )
    console.print(f"  export KUBECONFIG={env.kubeconfig}   # contexts: admin alice bob agent", soft_wrap=True)
    console.print(f"  logs: {env.dir / 'logs'}", soft_wrap=True)
    if not no_operator:
        console.print(
            "  try: airun run examples/hello.yaml --context bob;  airun dashboard -A --context alice", soft_wrap=True
        )


@main.command()
def down() -> None:
    """Stop what `airun up` started; the data is kept for the next `airun up`."""
    from controller.localcluster.devenv import DevEnvironment

    DevEnvironment(_state_dir()).down()
    console.print("[green]down[/]")


@main.command()
@click.option("--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig file (default: in-cluster or ~/.kube/config).")
@click.option("--context", help="Kubeconfig context.")
@click.option("--health-port", type=int, default=8081, show_default=True, help="Port of /healthz and /readyz.")
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address of the operator's endpoints.")
@click.option("--workspaces", envvar="AIRUN_WORKSPACES", help="Root of the io.fs workspaces (a folder per namespace).")
@click.option(
    "--test-capabilities/--no-test-capabilities",
    envvar="AIRUN_TEST_CAPABILITIES",
    default=False,
    help="Also load the test.* capabilities (tests and demo only).",
)
@click.option("--webhook-port", type=int, help="Serve the admission webhooks (HTTPS) on this port.")
@click.option("--webhook-host", help="Host name or IP the API server uses to reach the webhooks (default: --bind).")
@click.option("--webhook-cert", type=click.Path(exists=True), help="Serving certificate (PEM) of the webhooks.")
@click.option("--webhook-key", type=click.Path(exists=True), help="Its private key (PEM).")
@click.option("--webhook-ca", type=click.Path(exists=True), help="CA that signed it (goes into caBundle).")
@click.option(
    "--webhook-managed/--no-webhook-managed",
    envvar="AIRUN_WEBHOOK_MANAGED",
    default=True,
    show_default=True,
    help="Write the webhook configurations (URL client config). --no-webhook-managed: only serve the webhooks, "
    "whose configurations someone else owns (the Helm chart, through a Service).",
)
@click.option(
    "--notify-secret-file",
    envvar="AIRUN_NOTIFY_SECRET_FILE",
    type=click.Path(exists=True),
    help="Key that signs approval notifications (HMAC-SHA256).",
)
@click.option(
    "--attestation-key-file",
    envvar="AIRUN_ATTESTATION_KEY_FILE",
    type=click.Path(exists=True),
    help="Key (32 bytes or more) with which the admission webhook signs the principals it records; shared by "
    "all replicas and kept across restarts (without it: a throw-away key).",
)
@click.option(
    "--webhook-configuration",
    envvar="AIRUN_WEBHOOK_CONFIGURATION",
    default="airun.aifirst.dev",
    show_default=True,
    help="Name of the Mutating/ValidatingWebhookConfiguration; without both, no new workflow starts.",
)
@click.option(
    "--snapshot-key-file",
    envvar="AIRUN_SNAPSHOT_KEY_FILE",
    type=click.Path(exists=True),
    help="Key that seals the snapshots of Secrets (k8s.* compensation). Without it, steps that change a Secret fail.",
)
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics (/metrics) on this port.")
@click.option(
    "--audit-url",
    envvar="AIRUN_AUDIT_URL",
    help="SQLAlchemy URL of the audit store: sqlite:///PATH or postgresql+psycopg://... (none: no audit)",
)
@click.option(
    "--operator-namespace",
    envvar="AIRUN_OPERATOR_NAMESPACE",
    help="The operator's own namespace, which holds the credentials of custom Capability endpoints "
    "(default: the Pod's ServiceAccount namespace, else airun-system).",
)
@click.option("-v", "--verbose", is_flag=True)
def operator(**options: object) -> None:
    """Run the operator (kopf) against the cluster of KUBECONFIG."""
    from controller.operator.main import OperatorOptions
    from controller.operator.main import main as run_operator

    run_operator(OperatorOptions(**options))  # type: ignore[arg-type]


def _audit_url(url: str | None) -> str:
    """The store to read; a SQLite file must exist (reading one must not create an empty one)."""
    from sqlalchemy.engine import make_url

    url = url or f"sqlite:///{_state_dir().resolve() / 'audit.db'}"
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


@main.group(cls=_AuditGroup)
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


def _register_commands() -> None:
    from controller.cli import calls, dashboard, governance, mcp, workflows

    workflows.register(main)
    calls.register(main)
    dashboard.register(main)
    mcp.register(main)
    governance.register(main)
    governance.register_plan(main)


_register_commands()

if __name__ == "__main__":
    main()
