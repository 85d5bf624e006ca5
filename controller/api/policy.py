"""Pydantic models of Policy and ClusterPolicy specs, and of the principal a decision is made for."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from controller.api.capability import RiskLevel
from controller.api.workflow import Decision


class PolicyMode(StrEnum):
    ENFORCE = "Enforce"
    AUDIT = "Audit"


class Approvers(BaseModel):
    users: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    count: int = Field(1, ge=1, le=10, description="Quorum: how many distinct allowed people must approve.")


class Notify(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    webhook_url: str | None = Field(None, alias="webhookUrl")


class Rule(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    principal: str = "*"
    capabilities: list[str]
    risk_levels: list[RiskLevel] | None = Field(None, alias="riskLevels")
    action: Decision
    approvers: Approvers | None = None
    notify: Notify | None = None
    when: str | None = Field(None, description="A CEL condition; the rule matches only where it is true.")


class Limit(BaseModel):
    """At most MAX steps of a principal matching PRINCIPAL, on capabilities matching CAPABILITIES, within
    any window of PER_SECONDS (each principal counted apart)."""

    model_config = ConfigDict(populate_by_name=True)
    principal: str = "*"
    capabilities: list[str] = Field(min_length=1)
    max: int = Field(ge=1, le=10_000)
    per_seconds: int = Field(alias="perSeconds", ge=1, le=7 * 24 * 3600)


class Breaker(BaseModel):
    """After DENIALS denied steps of one principal within PER_SECONDS, that principal's new Workflows are
    refused at admission until someone resets the breaker (`airun policy reset PRINCIPAL`)."""

    model_config = ConfigDict(populate_by_name=True)
    denials: int = Field(ge=1, le=10_000)
    per_seconds: int = Field(alias="perSeconds", ge=1, le=7 * 24 * 3600)


class PolicySpec(BaseModel):
    mode: PolicyMode = PolicyMode.ENFORCE
    default: Decision = Decision.DENY
    rules: list[Rule] = Field(default_factory=list)
    limits: list[Limit] = Field(default_factory=list)
    breaker: Breaker | None = None


class PolicyObject(BaseModel):
    """A Policy (namespace set) or ClusterPolicy (namespace None) as the operator sees it."""

    name: str
    namespace: str | None = None
    spec: PolicySpec
    # Memo of controller.policy.evaluate: which rules can match a (principal, capability, risk), so that a
    # decision among many rules costs a lookup. A changed policy is a new object (kopf's index), with a new memo.
    _candidates: dict[tuple[Any, ...], tuple[int, ...]] = PrivateAttr(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"Policy {self.namespace}/{self.name}" if self.namespace else f"ClusterPolicy {self.name}"


class Principal(BaseModel):
    user: str
    groups: list[str] = Field(default_factory=list)


class CasePrincipal(Principal):
    model_config = ConfigDict(extra="forbid")


class PolicyTestCase(BaseModel):
    """One expectation: PRINCIPAL running CAPABILITY in NAMESPACE gets EXPECT (and, when asked, these approvers)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    name: str
    principal: CasePrincipal
    capability: str
    namespace: str | None = None  # default: the suite's
    irreversible: bool = False
    risk: RiskLevel | None = None  # default: the capability's own risk
    inputs: dict[str, Any] | None = None  # the step's rendered inputs, for `when:` conditions
    workflow: str | None = None
    step: str | None = None
    labels: dict[str, str] | None = None  # the workflow's labels
    params: dict[str, Any] | None = None  # the workflow's params
    expect: Decision
    expect_approvers: Approvers | None = Field(None, alias="expectApprovers")


class PolicyTestSuite(BaseModel):
    """A file of policy expectations (`airun policy test`), in the manner of `opa test` or `kyverno test`.

    `policies` names Policy/ClusterPolicy files relative to the suite (tested offline); without it the
    cluster's own policies are tested."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    api_version: str = Field("aifirst.dev/v1alpha1", alias="apiVersion")
    kind: Literal["PolicyTest"]
    namespace: str = "default"
    policies: list[str] | None = None
    cases: list[PolicyTestCase] = Field(min_length=1)
