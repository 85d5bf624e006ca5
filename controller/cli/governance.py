"""`airun capabilities list|inspect` and `airun policy explain`: what agents may do, and why."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from controller import API_GROUP, API_VERSION
from controller.api.capability import CapabilitySpec, RiskLevel
from controller.api.policy import PolicyObject, PolicySpec, PolicyTestSuite, Principal
from controller.cli.workflows import Kube, read_workflow, reason_of, with_identity
from controller.client.capabilities import catalogue
from controller.engine.redaction import redact
from controller.policy.evaluate import SEVERITY, PolicyQuery, PolicyResult, evaluate
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


def register(main: click.Group) -> None:
    @main.group(short_help="What workflows may use: risk, side effects, how each is undone.")
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

    @main.group(short_help="Explain and test policy decisions.")
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
        step_inputs = _pairs(inputs, "--input") if inputs else None
        query = PolicyQuery(
            principal,
            kube.namespace,
            capability,
            risk,
            irreversible=irreversible,
            inputs=step_inputs,
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
        console.print(f"  because: {result.reason}", soft_wrap=True)
        for line in decision_details(result):
            console.print(f"  {line}", soft_wrap=True)
        for verdict in result.verdicts:
            console.print(f"  {verdict.explanation} ({verdict.mode.value})", soft_wrap=True)
        for applied in limits_for(policies, principal, kube.namespace, capability):
            console.print(f"  counted by {applied.describe()}", soft_wrap=True)

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
        principal: str,
        operator_namespace: str,
        kubeconfig: str | None,
        context: str | None,
        namespace: str | None,
    ) -> None:
        """Close the circuit breakers that PRINCIPAL's denials opened (its new workflows are accepted again)
        and forget its denials. Needs the approver role; recorded in the audit trail as your act."""
        from controller.operator.limits import BREAKERS, principal_key

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
            f"reset {principal}: breakers closed ({opened}), {len(entry.get('denials') or [])} denials forgotten"
        )

    @policy.command("test")
    @click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @with_identity
    def policy_test(
        files: tuple[Path, ...], kubeconfig: str | None, context: str | None, namespace: str | None
    ) -> None:
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
                why = (
                    "; ".join(result.failures) if not result.passed else (result.result.reason if result.result else "")
                )
                mark = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
                table.add_row(result.case.name, result.case.expect.value, got, mark, why)
            console.print(table)
            total += len(results)
            failed += sum(1 for r in results if not r.passed)
        style = "red" if failed else "green"
        console.print(f"[{style}]{total - failed} passed, {failed} failed[/]")
        if failed:
            raise SystemExit(1)


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
    if result.decision.value == "REQUIRE_APPROVAL" and deciding is not None and deciding.approvers:
        who = deciding.approvers
        named = [f"users {', '.join(who.users)}"] * bool(who.users) + [f"groups {', '.join(who.groups)}"] * bool(
            who.groups
        )
        people = "; ".join(named) or "anyone but the requester"
        lines.append(f"approvers: {people}" + (f"; {who.count} distinct people must approve" if who.count > 1 else ""))
    return lines


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


def register_plan(main: click.Group) -> None:
    @main.command(short_help="Dry run of a Workflow: validity, rendered inputs, your policy decisions, undo chain.")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    @with_identity
    def plan(file: str, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        """Dry run of the Workflow in FILE, with no side effects: validate it, render the inputs it can,
        evaluate the cluster's policies for you, and show which steps would run, ask or be denied, and how
        each would be undone. Exit 1 when it could not run as it is."""

        from controller.api.workflow import StepType, WorkflowSpec
        from controller.engine import dag
        from controller.engine.saga import spec_errors
        from controller.engine.templating import TemplateError, render
        from controller.operator import template_sandbox

        # Templates that do more than read values render in a worker process with a time limit, as in
        # the operator: a runaway template in FILE fails its row instead of hanging the command.
        click.get_current_context().with_resource(template_sandbox.installed(workers=1))
        manifest = read_workflow(Path(file))
        kube = Kube(kubeconfig, context, namespace or manifest.get("metadata", {}).get("namespace"))
        try:
            spec = WorkflowSpec.model_validate(manifest.get("spec") or {})
        except ValidationError as invalid:
            raise click.ClickException(
                f"{file}: not a valid Workflow spec: {_errors(invalid, prefix='spec')}"
            ) from invalid
        capabilities = all_capabilities(kube)
        errors = spec_errors(spec, capabilities)
        principal = whoami(kube)
        policies = policies_for(kube)
        name = manifest.get("metadata", {}).get("name", "?")
        console.print(f"plan of workflow {kube.namespace}/{name} for {principal.user}")
        table = Table()
        for column in ("step", "capability", "risk", "decision", "why", "undone by", "inputs"):
            table.add_column(column, overflow="fold")
        context_values = {
            "params": spec.params,
            "steps": {},
            "workflow": {"name": name, "namespace": kube.namespace, "uid": "<uid>"},
        }
        blocked = bool(errors)
        labels = {str(k): str(v) for k, v in (manifest.get("metadata", {}).get("labels") or {}).items()}
        counted: list[str] = []
        undo_of: dict[str, str] = {}
        order = dag.topological_order(spec.steps) if not errors else [s.name for s in spec.steps]
        steps = {s.name: s for s in spec.steps}
        for step_name in order:
            step = steps[step_name]
            if step.type is StepType.APPROVAL:
                table.add_row(step.name, "-", "-", "REQUIRE_APPROVAL", "an explicit approval step", "-", "-")
                continue
            cap = capabilities.get(step.capability or "")
            if cap is None:
                table.add_row(step.name, step.capability or "", "?", "-", "unknown capability", "-", "-")
                continue
            rendered: dict[str, Any] | None = None
            try:
                rendered = render(step.inputs, context_values)
                inputs = yaml.safe_dump(rendered, default_flow_style=True).strip()
            except TemplateError as template_error:
                if "steps" in json.dumps(step.inputs) or "outputs" in json.dumps(step.inputs):
                    inputs = "(rendered at run time: uses outputs of earlier steps; decided then, on them)"
                else:  # nothing at run time can fix it: a missing parameter, a typo
                    inputs = f"[red]template error: {template_error}[/]"
                    blocked = True
            query = PolicyQuery(
                principal,
                kube.namespace,
                cap.id,
                cap.risk.level,
                irreversible=step.irreversible,
                workflow=name,
                step=step.name,
                inputs=rendered,
                labels=labels,
                params=spec.params,
                now=datetime.now(UTC),
            )
            result = evaluate(policies, query)
            decision, why = result.decision, "; ".join([result.reason, *decision_details(result)])
            undo_cap = capabilities.get(
                (step.compensation.capability if step.compensation else None)
                or (cap.compensation.capability if cap.compensation else None)
                or ""
            )
            if undo_cap is not None:  # the operator refuses a step whose undo it could not run
                undo_query = PolicyQuery(
                    principal, kube.namespace, undo_cap.id, undo_cap.risk.level, workflow=name, step=step.name
                )
                undo_result = evaluate(policies, undo_query)
                if SEVERITY[undo_result.decision] > SEVERITY[decision]:
                    decision, why = undo_result.decision, f"its compensation {undo_cap.id}: {undo_result.reason}"
            blocked |= decision.value == "DENY"
            for applied in limits_for(policies, principal, kube.namespace, cap.id):
                if applied.describe() not in counted:
                    counted.append(applied.describe())
            undo = (
                step.compensation.capability
                if step.compensation
                else (cap.compensation.capability if cap.compensation and cap.compensation.capability else "-")
            )
            table.add_row(step.name, cap.id, cap.risk.level.value, decision.value, why, undo or "-", inputs)
            if undo and undo != "-":
                undo_of[step.name] = undo
        console.print(table)
        for line in counted:
            console.print(f"rate limit: {line} (counted when a step starts)", soft_wrap=True)
        for error in errors:
            console.print(f"[red]invalid:[/] {error}")
        undoable = [n for n in order if n in undo_of]
        if undoable:
            chain = " <- ".join(f"{n} ({undo_of[n]})" for n in reversed(undoable))
            console.print(f"if a later step fails, these are undone, newest first: {chain}")
        if blocked:
            raise SystemExit(1)
