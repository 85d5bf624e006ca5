"""`airun dashboard`: a live terminal dashboard of workflows (Textual), as the current kubeconfig identity.

The app lives in `app` and is imported only when the command runs, so that other commands start fast."""

from __future__ import annotations

import click

from controller.cli.workflows import Kube, with_identity


@click.command()
@with_identity
@click.option(
    "-A", "--all-namespaces", is_flag=True, help="Workflows of every namespace (that your identity may list)."
)
def dashboard(kubeconfig: str | None, context: str | None, namespace: str | None, all_namespaces: bool) -> None:
    """A live terminal dashboard: workflows with their progress, the selected one's steps, approvals and
    events; approve (a), reject (r) and roll back (R) as your own identity. ? shows the keys."""
    if namespace and all_namespaces:
        raise click.UsageError("give -n NAMESPACE or -A, not both")
    from controller.cli.dashboard.app import Dashboard

    kube = Kube(kubeconfig, context, namespace)
    Dashboard(kube, kubeconfig=kubeconfig, context=context, namespace=None if all_namespaces else kube.namespace).run()


COMMANDS: list[click.Command] = [dashboard]
