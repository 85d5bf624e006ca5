"""`airun capabilities list|inspect` and `airun policy explain`: what agents may do, and why."""

from __future__ import annotations

import sys
from typing import Any

import click
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from rich.console import Console
from rich.table import Table

from controller import API_GROUP, API_VERSION
from controller.api.capability import CapabilitySpec, RiskLevel
from controller.api.policy import PolicyObject, PolicySpec, Principal
from controller.capabilities import custom, registry
from controller.cli.workflows import Kube, reason_of, with_identity
from controller.policy.evaluate import evaluate

console = Console(width=None if sys.stdout.isatty() else 200)


def _cluster_capabilities(kube: Kube | None) -> dict[str, CapabilitySpec]:
    found: dict[str, CapabilitySpec] = {}
    if kube is None:
        return found
    try:
        items: Any = kube.custom.list_cluster_custom_object(API_GROUP, API_VERSION, "capabilities")
    except ApiException:
        return found
    for item in items.get("items", []):
        try:
            found[item["metadata"]["name"]] = custom.parse(item["metadata"]["name"], item.get("spec") or {})
        except custom.InvalidCapability:
            continue
    return found


def all_capabilities(kube: Kube | None) -> dict[str, CapabilitySpec]:
    builtin = registry.load(include_plugins=True).specs()
    return {**_cluster_capabilities(kube), **builtin}


def policies_for(kube: Kube) -> list[PolicyObject]:
    try:
        return _policies(kube)
    except ApiException as error:
        raise click.ClickException(f"cannot read the policies that apply: {reason_of(error)}") from error


def _policies(kube: Kube) -> list[PolicyObject]:
    result: list[PolicyObject] = []
    cluster: Any = kube.custom.list_cluster_custom_object(API_GROUP, API_VERSION, "clusterpolicies")
    for item in cluster.get("items", []):
        result.append(PolicyObject(name=item["metadata"]["name"], spec=PolicySpec.model_validate(item["spec"])))
    local: Any = kube.custom.list_namespaced_custom_object(API_GROUP, API_VERSION, kube.namespace, "policies")
    for item in local.get("items", []):
        result.append(
            PolicyObject(
                name=item["metadata"]["name"], namespace=kube.namespace, spec=PolicySpec.model_validate(item["spec"])
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
    @main.group()
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

    @main.group()
    def policy() -> None:
        """Why a principal may or may not use a capability."""

    @policy.command("explain")
    @click.argument("capability")
    @click.option("--user", help="Explain for this user instead of yourself (as the API server knows you).")
    @click.option("--group", "groups", multiple=True, help="A group of --user (repeat).")
    @click.option("--irreversible", is_flag=True, help="As a step marked irreversible.")
    @with_identity
    def policy_explain(
        capability: str,
        user: str | None,
        groups: tuple[str, ...],
        irreversible: bool,
        kubeconfig: str | None,
        context: str | None,
        namespace: str | None,
    ) -> None:
        """The decision for CAPABILITY in the namespace: each policy's verdict and what decides."""
        kube = Kube(kubeconfig, context, namespace)
        specs = all_capabilities(kube)
        if capability not in specs:
            raise click.ClickException(f"unknown capability {capability!r}; see `airun capabilities list`")
        principal = Principal(user=user, groups=list(groups)) if user else whoami(kube)
        risk: RiskLevel = specs[capability].risk.level
        result = evaluate(
            policies_for(kube),
            principal=principal,
            namespace=kube.namespace,
            capability=capability,
            risk=risk,
            irreversible=irreversible,
        )
        console.print(
            f"{principal.user} ({', '.join(principal.groups) or 'no groups'}) -> {capability} "
            f"({risk.value} risk) in namespace {kube.namespace}: [bold]{result.decision.value}[/]"
        )
        console.print(f"  because: {result.reason}")
        for verdict in result.verdicts:
            console.print(f"  {verdict.explanation} ({verdict.mode.value})")
