"""Policy evaluation (pure): whether a principal may run a capability, must not, or must ask.

Inside one policy the first matching rule wins (or the policy's default). Across the Enforce policies
that apply the most restrictive decision wins: DENY > REQUIRE_APPROVAL > ALLOW. Audit policies are
evaluated and recorded but never decide. With no policy at all the decision is DENY. Whatever the
policies say, HIGH risk turns ALLOW into REQUIRE_APPROVAL, CRITICAL risk and irreversible steps always
need approval.

A rule with a `when:` CEL condition (controller/policy/conditions.py) matches only where the condition is
true for the step; one that fails to evaluate makes that rule's verdict a DENY quoting the error. The
variables are built once per decision, and only when a rule that matches otherwise has a condition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from controller.api.capability import RiskLevel
from controller.api.policy import Approvers, PolicyMode, PolicyObject, Principal, Rule
from controller.api.workflow import Decision
from controller.policy.conditions import ConditionError, Variables, activation, compile_condition

SEVERITY = {Decision.ALLOW: 0, Decision.REQUIRE_APPROVAL: 1, Decision.DENY: 2}


@dataclass(frozen=True)
class PolicyQuery:
    """What a policy is asked: may PRINCIPAL run CAPABILITY (of RISK) here? One value for every caller
    (forward steps, compensations, `airun policy explain/test`, policy test cases), so that a new fact a
    rule may read (the step's inputs for a `when:` condition) reaches every decision at once. INPUTS are
    rendered, secrets as references, never values; None where they are not known yet (a compensation
    checked before its step ran, a policy test case)."""

    principal: Principal
    namespace: str
    capability: str
    risk: RiskLevel
    irreversible: bool = False
    workflow: str | None = None
    step: str | None = None
    inputs: Mapping[str, Any] | None = None
    labels: Mapping[str, str] | None = None  # the workflow's labels
    params: Mapping[str, Any] | None = None  # the workflow's params
    now: datetime | None = None  # the instant of the decision (`now` in conditions); None: the Unix epoch

    def variables(self) -> Variables:
        """What a `when:` condition sees of this query."""
        return activation(
            user=self.principal.user,
            groups=list(self.principal.groups),
            namespace=self.namespace,
            workflow={"name": self.workflow or "", "labels": self.labels or {}, "params": self.params or {}},
            step={
                "name": self.step or "",
                "capability": self.capability,
                "risk": self.risk.value,
                "inputs": self.inputs or {},
            },
            now=self.now or EPOCH,
        )


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Lazy:
    """The query's variables, built on first use: most decisions meet no condition at all."""

    def __init__(self, query: PolicyQuery) -> None:
        self.query = query
        self._variables: Variables | None = None

    def get(self) -> Variables:
        if self._variables is None:
            self._variables = self.query.variables()
        return self._variables


@dataclass(frozen=True)
class Verdict:
    """One policy's answer."""

    policy: str
    decision: Decision
    rule: int | None  # index of the matching rule; None when the policy's default decided
    mode: PolicyMode
    approvers: Approvers | None = None
    notify_url: str | None = None
    when: str | None = None  # the condition of the deciding rule, when it has one
    seen: Mapping[str, Any] | None = None  # the values that condition read (not redacted: see redaction)
    error: str | None = None  # the condition failed to evaluate: this verdict is a DENY because of it

    @property
    def explanation(self) -> str:
        source = f"rule {self.rule}" if self.rule is not None else "default"
        text = f"{self.policy} {source}: {self.decision.value}"
        if self.error:
            text += f" (its condition failed: {self.error})"
        elif self.when:
            text += f" (when {self.when})"
        return text


@dataclass(frozen=True)
class PolicyResult:
    decision: Decision
    reason: str
    deciding: Verdict | None  # the enforced verdict that decided (None: fail-safe or escalation only)
    verdicts: tuple[Verdict, ...] = field(default_factory=tuple)

    @property
    def audit_only(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if v.mode is PolicyMode.AUDIT)


def principal_matches(pattern: str, principal: Principal) -> bool:
    if pattern.startswith("group:"):
        glob = pattern.removeprefix("group:")
        return any(fnmatchcase(group, glob) for group in principal.groups)
    return fnmatchcase(principal.user, pattern)


def rule_matches(rule: Rule, principal: Principal, capability: str, risk: RiskLevel) -> bool:
    if not principal_matches(rule.principal, principal):
        return False
    if not any(fnmatchcase(capability, glob) for glob in rule.capabilities):
        return False
    return rule.risk_levels is None or risk in rule.risk_levels


MAX_MEMO = 4096  # (principal, capability, risk) keys remembered per policy


def candidates(policy: PolicyObject, principal: Principal, capability: str, risk: RiskLevel) -> tuple[int, ...]:
    """The indexes of POLICY's rules whose principal, capabilities and risk levels match, in order, up to
    the first that has no condition (no later rule can decide). Remembered per policy."""
    key = (principal.user, tuple(principal.groups), capability, risk)
    memo: dict[tuple[Any, ...], tuple[int, ...]] = policy.__pydantic_private__["_candidates"]  # type: ignore[index]
    found = memo.get(key)
    if found is None:
        matching: list[int] = []
        for index, rule in enumerate(policy.spec.rules):
            if rule_matches(rule, principal, capability, risk):
                matching.append(index)
                if rule.when is None:
                    break
        found = tuple(matching)
        if len(memo) >= MAX_MEMO:
            memo.clear()
        memo[key] = found
    return found


def verdict_of(
    policy: PolicyObject,
    principal: Principal,
    capability: str,
    risk: RiskLevel,
    variables: _Lazy | None = None,
) -> Verdict:
    """POLICY's answer. VARIABLES: the query's, for rules with a `when:` (without them such a rule does
    not match). A condition that fails is that rule's DENY, except one that reads an input of a query
    whose inputs are not known yet (None): the rule does not match, the decision is made again on the
    inputs when they are (a compensation is decided again right before it runs)."""
    rules = policy.spec.rules
    for index in candidates(policy, principal, capability, risk):
        rule = rules[index]
        notify = rule.notify.webhook_url if rule.notify else None
        if rule.when is None:
            return Verdict(policy.ref, rule.action, index, policy.spec.mode, rule.approvers, notify)
        if variables is None:
            continue
        try:
            condition = compile_condition(rule.when)
            values = variables.get()
            holds = condition.holds(values)
        except ConditionError as error:
            if error.missing and variables.query.inputs is None:
                continue  # it reads inputs not known yet (a compensation checked before its step ran)
            message = str(error)
            return Verdict(policy.ref, Decision.DENY, index, policy.spec.mode, when=rule.when, error=message)
        if holds:
            seen = condition.seen(values)
            return Verdict(policy.ref, rule.action, index, policy.spec.mode, rule.approvers, notify, rule.when, seen)
    return Verdict(policy.ref, policy.spec.default, None, policy.spec.mode)


def applicable(policies: Sequence[PolicyObject], namespace: str) -> list[PolicyObject]:
    return [p for p in policies if p.namespace is None or p.namespace == namespace]


def evaluate(policies: Sequence[PolicyObject], query: PolicyQuery) -> PolicyResult:
    risk, irreversible = query.risk, query.irreversible
    relevant = sorted(applicable(policies, query.namespace), key=lambda p: (p.namespace is not None, p.name))
    variables = _Lazy(query)
    verdicts = tuple(verdict_of(p, query.principal, query.capability, risk, variables) for p in relevant)
    enforced = [v for v in verdicts if v.mode is PolicyMode.ENFORCE]
    if not verdicts:
        return PolicyResult(Decision.DENY, "no policy applies (the fail-safe default is DENY)", None, verdicts)
    if enforced:
        deciding: Verdict | None = max(enforced, key=lambda v: SEVERITY[v.decision])
        assert deciding is not None
        decision, reason = deciding.decision, deciding.explanation
    else:
        deciding, decision, reason = None, Decision.ALLOW, "only Audit policies apply: recorded, not enforced"
    if decision is Decision.ALLOW:
        if risk is RiskLevel.CRITICAL:
            decision, reason = Decision.REQUIRE_APPROVAL, f"{reason}; CRITICAL risk always requires approval"
        elif risk is RiskLevel.HIGH:
            decision, reason = Decision.REQUIRE_APPROVAL, f"{reason}; HIGH risk escalates ALLOW to approval"
        elif irreversible:
            decision, reason = Decision.REQUIRE_APPROVAL, f"{reason}; irreversible steps require approval"
    return PolicyResult(decision, reason, deciding, verdicts)
