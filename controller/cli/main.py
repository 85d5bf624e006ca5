"""The `airun` command."""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.console import Console

console = Console(stderr=True)


def _state_dir() -> Path:
    return Path(os.environ.get("AIRUN_STATE_DIR", ".airun"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="airun")
def main() -> None:
    """AI-First Runtime: the transactional control plane for AI agents."""


@main.command()
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
    console.print(f"  export KUBECONFIG={env.kubeconfig}   # contexts: admin alice bob agent")
    console.print(f"  logs: {env.dir / 'logs'}")


@main.command()
def down() -> None:
    """Stop what `airun up` started; the data is kept for the next `airun up`."""
    from controller.localcluster.devenv import DevEnvironment

    DevEnvironment(_state_dir()).down()
    console.print("[green]down[/]")


@main.command()
@click.option("--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig file (default: in-cluster or ~/.kube/config).")
@click.option("--context", help="Kubeconfig context.")
@click.option("--health-port", type=int, default=8081, show_default=True, help="Liveness endpoint port.")
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
    "--notify-secret-file",
    envvar="AIRUN_NOTIFY_SECRET_FILE",
    type=click.Path(exists=True),
    help="Key that signs approval notifications (HMAC-SHA256).",
)
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics (/metrics) on this port.")
@click.option("-v", "--verbose", is_flag=True)
def operator(**options: object) -> None:
    """Run the operator (kopf) against the cluster of KUBECONFIG."""
    from controller.operator.main import OperatorOptions
    from controller.operator.main import main as run_operator

    run_operator(OperatorOptions(**options))  # type: ignore[arg-type]
