"""`airun capabilities list|inspect|export`, `airun policy explain|test|reset` and `airun plan`: what agents
may do, and why."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from controller import API_GROUP, API_VERSION
from controller.api.capability import CapabilitySpec, RiskLevel
from controller.api.policy import PolicyObject, PolicySpec, PolicyTestSuite, Principal
from controller.api.workflow import Decision, WorkflowSpec, WorkflowStatus
from controller.cli.workflows import Kube, read_workflow, reason_of, with_identity
from controller.client.capabilities import catalogue
from controller.engine import steps
from controller.engine.redaction import redact
from controller.engine.state import WorkflowRef, World
from controller.engine.validation import spec_errors
from controller.policy.evaluate import PolicyQuery, PolicyResult, evaluate
from controller.policy.limits import limits_for

console = Console(width=None if sys.stdout.isatty() else 200)


def _cluster_capability_objects(kube: Kube | None) -> list[dict[str, Any]]:
    if kube is None:
        return []
    try:
        items: Any = kube.custom.list_cluster_custom_object(API_GROUP, API_VERSION, "capabilities")
    except ApiException:
        return []
    return list(items.get("items", []))


def all_capabilities(kube: Kube | None) -> dict[str, CapabilitySpec]:
    # The test family too: the local environment's operator runs with it (AIRUN_TEST_CAPABILITIES=1).
    return catalogue(_cluster_capability_objects(kube), include_test=True)


def policies_for(kube: Kube) -> list[PolicyObject]:
    """The ClusterPolicies and the Policies of the command's namespace."""
    return cluster_policies(kube, {kube.namespace})


def cluster_policies(kube: Kube, namespaces: set[str]) -> list[PolicyObject]:
    """The ClusterPolicies and the Policies of NAMESPACES, as the caller may read them."""
    try:
        return _policies(kube, namespaces)
    except ApiException as error:
        raise click.ClickException(f"cannot read the policies that apply: {reason_of(error)}") from error


def _policies(kube: Kube, namespaces: set[str]) -> list[PolicyObject]:
    result: list[PolicyObject] = []
    cluster: Any = kube.custom.list_cluster_custom_object(API_GROUP, API_VERSION, "clusterpolicies")
    for item in cluster.get("items", []):
        result.append(PolicyObject(name=item["metadata"]["name"], spec=PolicySpec.model_validate(item["spec"])))
    for namespace in sorted(namespaces):
        local: Any = kube.custom.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "policies")
        for item in local.get("items", []):
            result.append(
                PolicyObject(
                    name=item["metadata"]["name"], namespace=namespace, spec=PolicySpec.model_validate(item["spec"])
                )
            )
    return result


def whoami(kube: Kube) -> Principal:
    review: Any = client.AuthenticationV1Api().create_self_subject_review(
        client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
    )
    info = review.status.user_info
    return Principal(user=info.username, groups=list(info.groups or []))


@click.group(short_help="What workflows may use: risk, side effects, how each is undone.")
def capabilities() -> None:
    """The capabilities workflows may use: built-in, plugins and the cluster's Capability objects."""


@capabilities.command("list")
@click.option("--local", is_flag=True, help="Built-in and plugin capabilities only (no cluster).")
@with_identity
def capabilities_list(local: bool, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """One line per capability: risk, side effects, idempotency, how it is undone."""
    specs = all_capabilities(None if local else Kube(kubeconfig, context, namespace))
    table = Table()
    for column in ("capability", "risk", "side effects", "idempotent", "undone by", "description"):
        table.add_column(column, overflow="fold")
    for spec in sorted(specs.values(), key=lambda s: s.id):
        if spec.internal:
            continue
        undo = (
            "(the step declares it)"
            if spec.compensation and spec.compensation.from_step
            else (spec.compensation.capability if spec.compensation else "-")
        )
        table.add_row(
            spec.id,
            spec.risk.level.value,
            ", ".join(spec.side_effects) or "-",
            "yes" if spec.idempotent else "no",
            undo or "-",
            spec.description.strip()[:80],
        )
    console.print(table)


@capabilities.command("inspect")
@click.argument("capability")
@click.option("--local", is_flag=True, help="Built-in and plugin capabilities only (no cluster).")
@with_identity
def capabilities_inspect(
    capability: str, local: bool, kubeconfig: str | None, context: str | None, namespace: str | None
) -> None:
    """The whole spec of CAPABILITY (YAML)."""
    specs = all_capabilities(None if local else Kube(kubeconfig, context, namespace))
    if capability not in specs:
        raise click.ClickException(f"unknown capability {capability!r}; see `airun capabilities list`")
    console.print(
        yaml.safe_dump(specs[capability].model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)
    )


@capabilities.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mcp", "openai"]),
    default="mcp",
    show_default=True,
    help="mcp: the tools/list result of `airun mcp`; openai: OpenAI function-calling tool declarations.",
)
@click.option("--local", is_flag=True, help="Built-in and plugin capabilities only (no cluster).")
@with_identity
def capabilities_export(
    fmt: str, local: bool, kubeconfig: str | None, context: str | None, namespace: str | None
) -> None:
    """The tool schemas of the capabilities (and of the workflow and transaction tools), as JSON on standard
    output, for clients configured from files. Each tool is what `airun mcp` serves: calling it runs a governed
    Workflow under the caller's identity."""
    from controller.mcp import tools

    offered = tools.all_tools(all_capabilities(None if local else Kube(kubeconfig, context, namespace)))
    exported = tools.export_mcp(offered) if fmt == "mcp" else tools.export_openai(offered)
    click.echo(json.dumps(exported, indent=2))


@click.group(short_help="Explain and test policy decisions.")
def policy() -> None:
    """Why a principal may or may not use a capability (`explain`), and tests of policies (`test`)."""


@policy.command("explain")
@click.argument("capability")
@click.option("--user", help="Explain for this user instead of yourself (as the API server knows you).")
@click.option("--group", "groups", multiple=True, help="A group of --user (repeat).")
@click.option("--irreversible", is_flag=True, help="As a step marked irreversible.")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A rendered input of the step, for `when:` conditions (repeat; VALUE is YAML: 3, true, {kind: X}).",
)
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label of the workflow (repeat).")
@with_identity
def policy_explain(
    capability: str,
    user: str | None,
    groups: tuple[str, ...],
    irreversible: bool,
    inputs: tuple[str, ...],
    labels: tuple[str, ...],
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
) -> None:
    """The decision for CAPABILITY in the namespace: each policy's verdict and what decides, the values
    its conditions saw, the quorum it asks, and the rate limits that count the step. Without --input the
    conditions that read inputs leave their rules unmatched (as for a step not rendered yet)."""
    kube = Kube(kubeconfig, context, namespace)
    specs = all_capabilities(kube)
    if capability not in specs:
        raise click.ClickException(f"unknown capability {capability!r}; see `airun capabilities list`")
    principal = Principal(user=user, groups=list(groups)) if user else whoami(kube)
    risk: RiskLevel = specs[capability].risk.level
    query = PolicyQuery(
        principal,
        kube.namespace,
        capability,
        risk,
        irreversible=irreversible,
        inputs=_pairs(inputs, "--input") if inputs else None,
        labels={k: str(v) for k, v in _pairs(labels, "--label").items()},
        now=datetime.now(UTC),
    )
    policies = policies_for(kube)
    result = evaluate(policies, query)
    console.print(
        f"{principal.user} ({', '.join(principal.groups) or 'no groups'}) -> {capability} "
        f"({risk.value} risk) in namespace {kube.namespace}: [bold]{result.decision.value}[/]",
        soft_wrap=True,
    )
    console.print(f"  because: {escape(result.reason)}", soft_wrap=True)
    for line in decision_details(result):
        console.print(f"  {escape(line)}", soft_wrap=True)
    for verdict in result.verdicts:
        console.print(f"  {escape(verdict.explanation)} ({verdict.mode.value})", soft_wrap=True)
    for applied in limits_for(policies, principal, kube.namespace, capability):
        console.print(f"  counted by {escape(applied.describe())}", soft_wrap=True)


@policy.command("reset")
@click.argument("principal")
@click.option(
    "--operator-namespace",
    envvar="AIRUN_OPERATOR_NAMESPACE",
    default="airun-system",
    show_default=True,
    help="Where the operator keeps its state (the chart's release namespace).",
)
@with_identity
def policy_reset(
    principal: str, operator_namespace: str, kubeconfig: str | None, context: str | None, namespace: str | None
) -> None:
    """Close the circuit breakers that PRINCIPAL's denials opened (its new workflows are accepted again)
    and forget its denials. Needs the approver role; recorded in the audit trail as your act."""
    from controller.policy.limits import BREAKERS, principal_key

    kube = Kube(kubeconfig, context, namespace)
    key = principal_key(principal)
    try:
        current: Any = kube.core.read_namespaced_config_map(BREAKERS, operator_namespace)
    except ApiException as error:
        if error.status == 404:
            console.print(f"no circuit breaker has recorded anything for {principal}")
            return
        raise click.ClickException(reason_of(error)) from error
    entry = json.loads((current.data or {}).get(key) or "{}")
    if not entry:
        console.print(f"no circuit breaker has recorded anything for {principal}")
        return
    try:
        kube.core.patch_namespaced_config_map(BREAKERS, operator_namespace, {"data": {key: None}})
    except ApiException as error:
        raise click.ClickException(reason_of(error)) from error
    opened = ", ".join(sorted(entry.get("open") or {})) or "none open"
    console.print(
        f"reset {principal}: breakers closed ({opened}), {len(entry.get('denials') or [])} denials forgotten",
        soft_wrap=True,
    )


def _pairs(values: tuple[str, ...], option: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.ClickException(f"{option} {value!r}: expected KEY=VALUE")
        try:
            found[key] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as error:
            raise click.ClickException(f"{option} {value!r}: VALUE is not YAML: {error}") from error
    return found


def decision_details(result: PolicyResult) -> list[str]:
    """What a person needs beyond the reason: the values the deciding condition saw, the quorum."""
    lines = []
    deciding = result.deciding
    if deciding is not None and deciding.seen:
        saw = ", ".join(f"{k} = {json.dumps(v, default=str)}" for k, v in redact(dict(deciding.seen)).items())
        lines.append(f"its condition saw: {saw}")
    if result.decision is Decision.REQUIRE_APPROVAL and deciding is not None and deciding.approvers:
        who = deciding.approvers
        named = [f"users {', '.join(who.users)}"] * bool(who.users)
        named += [f"groups {', '.join(who.groups)}"] * bool(who.groups)
        people = "; ".join(named) or "anyone but the requester"
        lines.append(f"approvers: {people}" + (f"; {who.count} distinct people must approve" if who.count > 1 else ""))
    return lines


@policy.command("test")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@with_identity
def policy_test(files: tuple[Path, ...], kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """Check the expectations in FILES (kind: PolicyTest) against the policies they name, offline, or
    against the cluster's policies when a file names none. Exit 1 when any case fails."""
    from controller.policy.cases import run_cases

    failed = total = 0
    for file in files:
        suite = _read_suite(file)
        kube: Kube | None = None
        if suite.policies is not None:
            policies = [p for name in suite.policies for p in _read_policies(file.parent / name, suite.namespace)]
            source = ", ".join(suite.policies)
        else:
            kube = Kube(kubeconfig, context, namespace)
            namespaces = {case.namespace or suite.namespace for case in suite.cases}
            policies = cluster_policies(kube, namespaces)
            source = "the cluster's policies"
        risks = {cap_id: spec.risk.level for cap_id, spec in all_capabilities(kube).items()}
        results = run_cases(suite, policies, risks, now=datetime.now(UTC))
        console.print(f"[bold]{file}[/] against {source}", soft_wrap=True)
        table = Table()
        for column in ("case", "expected", "got", "", "why"):
            table.add_column(column, overflow="fold")
        for result in results:
            got = result.result.decision.value if result.result else "-"
            why = "; ".join(result.failures) if not result.passed else (result.result.reason if result.result else "")
            mark = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
            table.add_row(result.case.name, result.case.expect.value, got, mark, why)
        console.print(table)
        total += len(results)
        failed += sum(1 for r in results if not r.passed)
    style = "red" if failed else "green"
    console.print(f"[{style}]{total - failed} passed, {failed} failed[/]")
    if failed:
        raise SystemExit(1)


def _read_suite(file: Path) -> PolicyTestSuite:
    try:
        return PolicyTestSuite.model_validate(yaml.safe_load(file.read_text()) or {})
    except yaml.YAMLError as error:
        raise click.ClickException(f"{file}: not YAML: {error}") from error
    except ValidationError as error:
        raise click.ClickException(f"{file}: not a PolicyTest: {_errors(error)}") from error


def _read_policies(file: Path, default_namespace: str) -> list[PolicyObject]:
    """The Policy and ClusterPolicy objects in FILE (a Policy without a namespace gets the suite's)."""
    try:
        documents = [d for d in yaml.safe_load_all(file.read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as error:
        raise click.ClickException(f"cannot read policies from {file}: {error}") from error
    found: list[PolicyObject] = []
    for document in documents:
        kind, meta = document.get("kind"), document.get("metadata") or {}
        if kind not in ("Policy", "ClusterPolicy"):
            continue
        try:
            spec = PolicySpec.model_validate(document.get("spec") or {})
        except ValidationError as error:
            raise click.ClickException(f"{file}: {kind} {meta.get('name')}: {_errors(error)}") from error
        namespace = (meta.get("namespace") or default_namespace) if kind == "Policy" else None
        found.append(PolicyObject(name=meta.get("name", "?"), namespace=namespace, spec=spec))
    if not found:
        raise click.ClickException(f"{file} holds no Policy or ClusterPolicy")
    return found


def _errors(error: ValidationError, prefix: str = "") -> str:
    return "; ".join(
        f"{'.'.join([prefix] * bool(prefix) + [str(p) for p in e['loc']]) or '(top)'}: {e['msg']}"
        for e in error.errors()
    )


@click.command(short_help="Dry run of a Workflow: validity, rendered inputs, your policy decisions, undo chain.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@with_identity
def plan(file: str, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
    """Dry run of the Workflow in FILE, with no side effects: validate it, render the inputs it can,
    evaluate the cluster's policies for you, and show which steps would run, ask or be denied, and how
    each would be undone. Exit 1 when it could not run as it is."""
    from controller.operator import template_sandbox

    # Templates that do more than read values render in a worker process with a time limit, as in
    # the operator: a runaway template in FILE fails its row instead of hanging the command.
    click.get_current_context().with_resource(template_sandbox.installed(workers=1))
    manifest = read_workflow(Path(file))
    kube = Kube(kubeconfig, context, namespace or manifest.get("metadata", {}).get("namespace"))
    try:
        spec = WorkflowSpec.model_validate(manifest.get("spec") or {})
    except ValidationError as invalid:
        raise click.ClickException(f"{file}: not a valid Workflow spec: {_errors(invalid, prefix='spec')}") from invalid
    world = _dry_run_world(kube, manifest.get("metadata", {}).get("name", "?"), spec)
    labels = manifest.get("metadata", {}).get("labels") or {}
    world = replace(world, labels={str(k): str(v) for k, v in labels.items()})
    errors = spec_errors(spec, world.capabilities)
    console.print(f"plan of workflow {kube.namespace}/{world.ref.name} for {world.principal.user}")
    previews = steps.preview(world)
    console.print(_plan_table(previews))
    counted = dict.fromkeys(
        applied.describe()
        for p in previews
        if p.label
        for applied in limits_for(world.policies, world.principal, kube.namespace, p.label)
    )
    for line in counted:
        console.print(f"rate limit: {escape(line)} (counted when a step starts)", soft_wrap=True)
    for error in errors:
        console.print(f"[red]invalid:[/] {escape(error)}")
    undoable = [p for p in previews if p.undone_by]
    if undoable:
        chain = " <- ".join(f"{p.step} ({p.undone_by})" for p in reversed(undoable))
        console.print(f"if a later step fails, these are undone, newest first: {chain}")
    if errors or any(p.decision is Decision.DENY or p.template_error for p in previews):
        raise SystemExit(1)


def _dry_run_world(kube: Kube, name: str, spec: WorkflowSpec) -> World:
    """The world the operator would plan the workflow in if the caller created it now (no uid yet)."""
    return World(
        ref=WorkflowRef(name, kube.namespace, "<uid>"),
        spec=spec,
        status=WorkflowStatus(),
        capabilities=all_capabilities(kube),
        policies=policies_for(kube),
        principal=whoami(kube),
        now=datetime.now(UTC),
    )


def _plan_table(previews: list[steps.Preview]) -> Table:
    table = Table()
    for column in ("step", "capability", "risk", "decision", "why", "undone by", "inputs"):
        table.add_column(column, overflow="fold")
    for p in previews:
        if p.template_error:
            inputs = f"[red]template error: {escape(p.template_error)}[/]"
        elif p.run_time:
            inputs = steps.RUN_TIME_INPUTS
        elif p.inputs is not None:
            inputs = escape(yaml.safe_dump(p.inputs, default_flow_style=True).strip())
        else:
            inputs = "-"
        table.add_row(
            p.step,
            p.label or "-",
            p.risk.value if p.risk else ("?" if p.decision is None else "-"),
            p.decision.value if p.decision else "-",
            escape(p.why),
            p.undone_by or "-",
            inputs,
        )
    return table


COMMANDS: list[click.Command] = [capabilities, policy, plan]
