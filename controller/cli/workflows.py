"""`airun run|status|approve|reject|rollback|events`: the front door, always as the current kubeconfig
identity (the API server authenticates it; nothing here can act as anyone else)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from rich.console import Console
from rich.tree import Tree

from controller import API_GROUP, API_VERSION
from controller.api.approval import ApprovalPhase
from controller.api.workflow import EventType, StepPhase, WorkflowPhase
from controller.cli import progress
from controller.cli.progress import styled
from controller.client.workflows import NotAWorkflow, pending_approvals, reason_of, workflow_from_text
from controller.policy.approvers import quorum_text

__all__ = ["Kube", "read_workflow", "reason_of", "tree", "with_identity"]
EXIT_CODES = {
    WorkflowPhase.SUCCEEDED: 0,
    WorkflowPhase.FAILED: 1,
    WorkflowPhase.COMPENSATED: 1,
    WorkflowPhase.COMPENSATION_FAILED: 2,
}
console = Console()


class Kube:
    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        try:
            config.load_kube_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
            contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        except config.ConfigException as error:
            raise click.ClickException(f"no usable kubeconfig: {error}") from error
        chosen = context and next((c for c in contexts if c["name"] == context), None)
        self.namespace = namespace or ((chosen or active).get("context", {}).get("namespace")) or "default"
        self.custom = client.CustomObjectsApi()
        self.core = client.CoreV1Api()

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        try:
            result: Any = self.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace or self.namespace, plural, name
            )
        except ApiException as error:
            raise click.ClickException(reason_of(error)) from error
        return dict(result)

    def patch(self, plural: str, name: str, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        try:
            result: Any = self.custom.patch_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace or self.namespace, plural, name, body
            )
        except ApiException as error:
            raise click.ClickException(reason_of(error)) from error
        return dict(result)


def decide(
    kube: Kube, name: str, decision: ApprovalPhase, reason: str | None, namespace: str | None = None
) -> dict[str, Any]:
    """Approve or reject the Approval NAME. The same merge patch kubectl would send; the API server records
    who sent it, and the admission webhook refuses it when that identity may not decide."""
    spec: dict[str, Any] = {"decision": decision.value}
    if reason:
        spec["reason"] = reason
    return kube.patch("approvals", name, {"spec": spec}, namespace)


def approval_named(kube: Kube, name: str) -> str:
    """NAME when it is an Approval; otherwise, when NAME is a workflow waiting for one Approval, that one
    (so that `airun approve WORKFLOW` works). Anything else is left to the PATCH to report."""
    try:
        kube.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, kube.namespace, "approvals", name)
        return name
    except ApiException as error:
        if error.status != 404:
            return name
    try:
        workflow: Any = kube.custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, kube.namespace, "workflows", name
        )
    except ApiException:
        return name
    pending = sorted(pending_approvals(workflow).values())
    if len(pending) == 1:
        console.print(f"workflow {name} waits for approval {pending[0]}")
        return pending[0]
    if pending:
        raise click.ClickException(
            f"workflow {name} waits for {len(pending)} approvals: {', '.join(pending)}; name one"
        )
    raise click.ClickException(f"workflow {name} waits for no approval (no Approval is called {name} either)")


def approvals_of(kube: Kube, workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Approvals the workflow's steps name, by name (those this identity can read)."""
    found: dict[str, dict[str, Any]] = {}
    for step in (workflow.get("status") or {}).get("steps") or []:
        name = step.get("approval")
        if not name:
            continue
        try:
            approval: Any = kube.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, kube.namespace, "approvals", name
            )
        except ApiException:
            continue
        found[name] = approval
    return found


def request_rollback(kube: Kube, name: str, namespace: str | None = None) -> dict[str, Any]:
    """Ask the operator to compensate the workflow NAME (the panic button): sets spec.rollback: true."""
    return kube.patch("workflows", name, {"spec": {"rollback": True}}, namespace)


def read_workflow(file: Path) -> dict[str, Any]:
    """The one Workflow in FILE (other documents, such as a Policy beside it, are not this command's)."""
    try:
        return workflow_from_text(file.read_text(), str(file))
    except NotAWorkflow as error:
        raise click.ClickException(str(error)) from error


def tree(obj: dict[str, Any], approvals: dict[str, dict[str, Any]] | None = None) -> Tree:
    """OBJ as a tree; APPROVALS (by name) add each step's approval state ("1 of 2 approvals")."""
    status = obj.get("status") or {}
    meta = obj["metadata"]
    title = f"[bold]{meta['namespace']}/{meta['name']}[/] {styled(status.get('phase'))}"
    if status.get("reason"):
        title += f" ({status['reason']})"
    root = Tree(title)
    if status.get("principal"):
        root.add(f"principal: {status['principal']}")
    for step in status.get("steps", []):
        line = f"{step['name']}: {styled(step.get('phase'))}"
        if step.get("decision"):
            line += f"  decision {step['decision']}"
        if step.get("attempts"):
            line += f"  attempts {step['attempts']}"
        node = root.add(line)
        if step.get("policy"):
            node.add(f"[dim]policy: {step['policy']}[/]")
        if step.get("approval"):
            approval = (approvals or {}).get(step["approval"]) or {}
            state = (approval.get("status") or {}).get("phase")
            tally = quorum_text(approval.get("spec") or {})
            extra = "".join(f" {x}" for x in (state, f"({tally})" if tally else None) if x)
            node.add(f"approval: {step['approval']}{extra}")
        if step.get("condition"):
            condition = step["condition"]
            saw = ", ".join(f"{k}={v!r}" for k, v in (condition.get("saw") or {}).items())
            node.add(f"[dim]when: {condition.get('when')}" + (f"  saw {saw}" if saw else "") + "[/]")
        if step.get("error"):
            node.add(f"[red]error: {step['error']}[/]")
        compensation = step.get("compensation") or {}
        if compensation.get("phase") and compensation["phase"] != StepPhase.PENDING:
            node.add(f"compensation: {compensation.get('capability')} {styled(compensation['phase'])}")
    if status.get("message"):
        root.add(f"[dim]{status['message']}[/]")
    return root


IDENTITY_OPTIONS = [
    click.option("--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig file (default: ~/.kube/config)."),
    click.option("--context", help="Kubeconfig context: whose identity to use."),
    click.option("-n", "--namespace", help="Namespace (default: the context's, or default)."),
]


def with_identity(function: Any) -> Any:
    """The options that pick the kubeconfig identity and namespace."""
    for option in reversed(IDENTITY_OPTIONS):
        function = option(function)
    return function


@click.command(short_help="Create the Workflow in FILE and follow it live; the exit code says how it ended.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the workflow until it ends.")
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds to follow it.")
@with_identity
def run(
    file: Path, wait: bool, timeout: float, kubeconfig: str | None, context: str | None, namespace: str | None
) -> None:
    """Create the Workflow in FILE and follow it; the exit code says how it ended
    (0 Succeeded, 1 Failed or Compensated, 2 CompensationFailed, 3 still running at --timeout)."""
    kube = Kube(kubeconfig, context, namespace)
    manifest = read_workflow(file)
    namespace = manifest.get("metadata", {}).get("namespace") or kube.namespace
    kube.namespace = namespace
    try:
        created: Any = kube.custom.create_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "workflows", manifest
        )
    except ApiException as error:
        hint = ""
        if error.status == 409:  # a workflow runs once: a new run is a new object
            hint = (
                f" (a workflow runs once: `airun status {manifest['metadata'].get('name')} -n {namespace}` shows "
                "that run; delete it or use metadata.generateName for a new run each time)"
            )
        raise click.ClickException(reason_of(error) + hint) from error
    name = created["metadata"]["name"]
    console.print(f"workflow {namespace}/{name} created")
    if not wait:
        return
    obj = progress.follow(lambda: kube.get("workflows", name), console, timeout)
    console.print(tree(obj))
    sys.exit(EXIT_CODES.get((obj.get("status") or {}).get("phase", ""), 3))


@click.command()
@click.argument("name")
@with_identity
def status(name: str, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """A workflow as a tree: steps, phases, decisions, approvals (with their tally), compensation."""
    kube = Kube(kubeconfig, context, namespace)
    obj = kube.get("workflows", name)
    console.print(tree(obj, approvals_of(kube, obj)))


def decide_as(
    name: str,
    decision: ApprovalPhase,
    reason: str | None,
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
) -> None:
    kube = Kube(kubeconfig, context, namespace)
    result = decide(kube, approval_named(kube, name), decision, reason)
    spec = result.get("spec") or {}
    tally = quorum_text(spec)
    if tally and not spec.get("decision"):
        console.print(f"approval {result['metadata']['name']}: your {decision} is recorded, {tally}")
    elif tally:
        console.print(f"approval {result['metadata']['name']}: {spec['decision']} ({tally})")
    else:
        console.print(f"approval {result['metadata']['name']}: {decision}")


@click.command()
@click.argument("name")
@click.option("--reason", help="Why (kept with the decision).")
@with_identity
def approve(name: str, reason: str | None, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """Approve the Approval NAME, or the one a workflow NAME waits for (as your own identity)."""
    decide_as(name, ApprovalPhase.APPROVED, reason, kubeconfig, context, namespace)


@click.command()
@click.argument("name")
@click.option("--reason", help="Why (kept with the decision).")
@with_identity
def reject(name: str, reason: str | None, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """Reject the Approval NAME (or the one a workflow NAME waits for): its workflow fails and is compensated."""
    decide_as(name, ApprovalPhase.REJECTED, reason, kubeconfig, context, namespace)


@click.command()
@click.argument("name")
@with_identity
def rollback(name: str, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """Compensate the finished workflow NAME (sets spec.rollback: true)."""
    request_rollback(Kube(kubeconfig, context, namespace), name)
    console.print(f"workflow {name}: rollback requested")


@click.command()
@click.argument("name")
@with_identity
def events(name: str, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """The events of workflow NAME, oldest first."""
    kube = Kube(kubeconfig, context, namespace)
    uid = kube.get("workflows", name)["metadata"]["uid"]  # a clear "not found" rather than an empty list
    # By uid too: Events of an earlier workflow of the same name are not about this one.
    selector = f"involvedObject.name={name},involvedObject.uid={uid}"
    items = kube.core.list_namespaced_event(kube.namespace, field_selector=selector).items
    if not items:
        console.print(f"no events for workflow {kube.namespace}/{name} (events expire after an hour)")
    items.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp))
    for event in items:
        when = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
        style = "yellow" if event.type == EventType.WARNING else "white"
        console.print(f"{when:%H:%M:%S} [{style}]{event.type:<7} {event.reason}[/] {event.message}")


COMMANDS: list[click.Command] = [run, status, approve, reject, rollback, events]
