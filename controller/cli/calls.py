"""`airun execute` (one governed call) and `airun undo` (the caller's own last calls, newest first): the
one-call-at-a-time front door of DESIGN section 6, always as the current kubeconfig identity."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from kubernetes.client.exceptions import ApiException
from rich.console import Console

from controller import API_GROUP, API_VERSION
from controller.api.workflow import TERMINAL_PHASES
from controller.cli.governance import all_capabilities, whoami
from controller.cli.workflows import Kube, with_identity
from controller.client import undo
from controller.client.calls import approve_command, one_step_workflow
from controller.client.workflows import pending_approvals, reason_of, summary

POLL_SECONDS = 0.25
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_WAITING = 0, 1, 3
CLI_MANAGED_BY = {"app.kubernetes.io/managed-by": "airun-cli"}
err = Console(stderr=True)


def _params(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint="--params") from error
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object of the capability's inputs", param_hint="--params")
    return value


def _wait(kube: Kube, name: str, timeout: float, done: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    obj = kube.get("workflows", name)
    while not done(obj) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        obj = kube.get("workflows", name)
    return obj


def _emit(output: str, data: dict[str, Any], text: str) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(text)


def execute_outcome(obj: dict[str, Any], capability: str) -> tuple[int, dict[str, Any], str]:
    """The exit code, the JSON result and the text of one call as it stands."""
    state = summary(obj)
    namespace, name = state["namespace"], state["workflow"]
    base: dict[str, Any] = {"workflow": name, "namespace": namespace, "phase": state["phase"]}
    step: dict[str, Any] = state["steps"][0] if state["steps"] else {}
    if state["phase"] == "Succeeded":
        outputs = step.get("outputs", {})
        return EXIT_SUCCEEDED, {**base, "outputs": outputs}, json.dumps(outputs, indent=2, default=str)
    if state["phase"] in TERMINAL_PHASES:
        failure: dict[str, Any] = {
            **base,
            **{k: state[k] for k in ("reason", "message") if k in state},
            **{k: step[k] for k in ("decision", "policy", "error") if k in step},
        }
        why = step.get("error") or state.get("message") or state["phase"]
        return (
            EXIT_FAILED,
            failure,
            f"{capability} did not succeed (workflow {namespace}/{name}, {state['phase']}): {why}",
        )
    pending = pending_approvals(obj)
    if pending:
        approvals = [{"step": s, "approval": a, "approve": approve_command(namespace, a)} for s, a in pending.items()]
        first = approvals[0]
        text = (
            f"{capability} waits for approval {first['approval']} (workflow {namespace}/{name}); a person allowed "
            f"to approve (not you) runs:\n  {first['approve']}"
        )
        return EXIT_WAITING, {**base, "phase": "AwaitingApproval", "approvals": approvals}, text
    return (
        EXIT_WAITING,
        base,
        f"{capability} still runs (workflow {namespace}/{name}): airun status {name} -n {namespace}",
    )


@click.command(short_help="Run one capability as a governed one-step Workflow and print its outputs.")
@click.argument("capability")
@click.option("--params", "params_text", default="{}", show_default=True, help="The inputs, a JSON object.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds to wait for the end.")
@click.option("--transaction", help="Join this open Transaction (one you began).")
@with_identity
def execute(
    capability: str,
    params_text: str,
    output: str,
    timeout: float,
    transaction: str | None,
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
) -> None:
    """Run CAPABILITY once, as a one-step Workflow created as you (policies, approvals, audit and
    compensation apply), and print its outputs (-o json: the whole result).

    Exit code: 0 Succeeded, 1 failed or denied, 3 waiting for approval (the `kubectl patch` line a person
    runs is printed) or still running at --timeout."""
    params = _params(params_text)
    kube = Kube(kubeconfig, context, namespace)
    specs = all_capabilities(kube)
    # A tool name as `capabilities export` gives it (io-fs-write_file) names the capability too.
    spec = specs.get(capability) or specs.get(capability.replace("-", "."))
    if transaction is None and isinstance(params.get("transaction"), str):  # the tools' reserved argument
        transaction = params.pop("transaction")
    if spec is None or spec.internal:
        raise click.ClickException(f"unknown capability {capability!r}; see `airun capabilities list`")
    manifest = one_step_workflow(spec, params, transaction=transaction, managed_by=CLI_MANAGED_BY, prefix="call")
    capability = spec.id
    try:
        created: Any = kube.custom.create_namespaced_custom_object(
            API_GROUP, API_VERSION, kube.namespace, "workflows", manifest
        )
    except ApiException as error:
        raise click.ClickException(reason_of(error)) from error
    name = created["metadata"]["name"]
    err.print(f"workflow {kube.namespace}/{name} created", highlight=False)
    obj = _wait(kube, name, timeout, lambda o: summary(o)["phase"] in TERMINAL_PHASES or bool(pending_approvals(o)))
    code, data, text = execute_outcome(obj, capability)
    if code == EXIT_FAILED and output == "text":
        err.print(f"[red]{text}[/]", highlight=False, soft_wrap=True)
    else:
        _emit(output, data, text)
    sys.exit(code)


@click.command("undo", short_help="Undo your own last N finished calls or workflows, newest first.")
@click.argument("count", type=click.IntRange(min=1), default=1)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--timeout", type=float, default=120, show_default=True, help="Seconds to wait for each undo.")
@with_identity
def undo_command(
    count: int, output: str, timeout: float, kubeconfig: str | None, context: str | None, namespace: str | None
) -> None:
    """Compensate your own last COUNT finished calls or workflows in the namespace (default 1), newest
    completion first, one after the other, each through its saga's governed compensation (spec.rollback).
    "Your own": the principal the operator recorded from the API server's authentication.

    Exit code: 0 all undone, 1 an undo failed (it stops there), 3 an undo still runs at --timeout."""
    kube = Kube(kubeconfig, context, namespace)
    me = whoami(kube).user
    listed: Any = kube.custom.list_namespaced_custom_object(API_GROUP, API_VERSION, kube.namespace, "workflows")
    chosen = undo.candidates(listed.get("items", []), me, count)
    results: list[dict[str, Any]] = []
    code = EXIT_SUCCEEDED
    for obj in chosen:
        name = obj["metadata"]["name"]
        kube.patch("workflows", name, undo.ROLLBACK_PATCH)
        after = _wait(kube, name, timeout, lambda o: summary(o)["phase"] in undo.UNDO_FINISHED)
        done = undo.entry(after)
        results.append(done)
        if output == "text":
            click.echo(f"undone {undo.line(done)}" if done["phase"] == "Compensated" else undo.line(done))
        if done["phase"] != "Compensated":
            code = EXIT_FAILED if done["phase"] in undo.UNDO_FINISHED else EXIT_WAITING
            break
    if output == "json":
        click.echo(json.dumps({"principal": me, "namespace": kube.namespace, "undone": results}, indent=2))
    elif not chosen:
        click.echo(f"nothing of {me} to undo in {kube.namespace}")
    elif len(chosen) < count and code == EXIT_SUCCEEDED:
        click.echo(f"only {len(chosen)} of {me}'s calls in {kube.namespace} had something to undo")
    sys.exit(code)


COMMANDS = [execute, undo_command]
