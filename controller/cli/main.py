"""The `airun` command."""

from __future__ import annotations

from typing import Any

from controller import lazy_imports

lazy_imports.install()  # before any command's module imports the libraries it defers (docs/architecture.md, "Costs")

import click  # noqa: E402
from rich.console import Console  # noqa: E402

from controller.cli import state_dir  # noqa: E402

console = Console(stderr=True)


class _Airun(click.Group):
    """Turns "the API server cannot be reached" into one clear line instead of a traceback. The commands
    of the other CLI modules are registered when first looked for, so `airun operator` (the operator's
    process) never imports them and what they import (docs/architecture.md, "Costs")."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None:
            _register_commands()
            found = super().get_command(ctx, cmd_name)
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        _register_commands()
        return super().list_commands(ctx)

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

    env = DevEnvironment(state_dir())
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

    DevEnvironment(state_dir()).down()
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
@click.option(
    "--shutdown-grace-seconds",
    envvar="AIRUN_SHUTDOWN_GRACE_SECONDS",
    type=click.FloatRange(min=0),
    default=25.0,
    show_default=True,
    help="On SIGTERM: start no new step, let attempts in flight finish for at most this long, checkpoint, "
    "exit (keep it below the Pod's terminationGracePeriodSeconds). A second signal stops at once.",
)
@click.option(
    "--shards",
    envvar="AIRUN_SHARDS",
    type=click.IntRange(min=0, max=256),
    default=0,
    show_default=True,
    help="Split the workflows into this many shards, each held by one replica at a time through a Lease of "
    "the operator's namespace (every replica must be given the same number). 0: no Leases, this process "
    "runs every workflow (one replica only).",
)
@click.option(
    "--identity",
    envvar="AIRUN_IDENTITY",
    help="This replica's name in the Leases (default: the Pod's name, POD_NAME, else the host name and a "
    "random suffix). Two processes must never share one.",
)
@click.option(
    "--lease-seconds",
    envvar="AIRUN_LEASE_SECONDS",
    type=click.FloatRange(min=1, max=300),
    default=15.0,
    show_default=True,
    help="With --shards: how long a Lease lasts unrenewed; a dead replica's workflows move after this.",
)
@click.option("-v", "--verbose", is_flag=True)
def operator(**options: object) -> None:
    """Run the operator (kopf) against the cluster of KUBECONFIG."""
    from controller.operator.main import OperatorOptions
    from controller.operator.main import main as run_operator

    run_operator(OperatorOptions(**options))  # type: ignore[arg-type]


def _register_commands() -> None:
    """Every other command: each module of the CLI lists its own (COMMANDS), registered the same way."""
    from controller.cli import audit, calls, dashboard, governance, mcp, workflows

    for module in (workflows, calls, dashboard, mcp, governance, audit):
        for command in module.COMMANDS:
            if command.name not in main.commands:
                main.add_command(command)


if __name__ == "__main__":
    main()
