"""Policy test cases (pure): each case's expected decision against what `evaluate` decides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from controller.api.capability import RiskLevel
from controller.api.policy import PolicyObject, PolicyTestCase, PolicyTestSuite
from controller.policy.evaluate import PolicyQuery, PolicyResult, evaluate


@dataclass(frozen=True)
class CaseResult:
    case: PolicyTestCase
    namespace: str
    result: PolicyResult | None  # None: the case could not be evaluated (see error)
    error: str | None = None

    @property
    def failures(self) -> list[str]:
        """What differs from the expectation (empty: the case passes)."""
        if self.result is None:
            return [self.error or "not evaluated"]
        found: list[str] = []
        if self.result.decision is not self.case.expect:
            found.append(f"expected {self.case.expect.value}, got {self.result.decision.value}")
        wanted = self.case.expect_approvers
        if wanted is not None:
            deciding = self.result.deciding
            got = deciding.approvers if deciding and deciding.approvers else None
            got_users, got_groups = (sorted(got.users), sorted(got.groups)) if got else ([], [])
            got_count = got.count if got else 1
            if (sorted(wanted.users), sorted(wanted.groups), wanted.count) != (got_users, got_groups, got_count):
                found.append(
                    f"expected approvers users={wanted.users} groups={wanted.groups} count={wanted.count}, "
                    f"got {got_users} {got_groups} count={got_count}"
                )
        return found

    @property
    def passed(self) -> bool:
        return not self.failures


def run_cases(
    suite: PolicyTestSuite,
    policies: Sequence[PolicyObject],
    risks: Mapping[str, RiskLevel],
    now: datetime | None = None,
) -> list[CaseResult]:
    """Every case of SUITE against POLICIES; RISKS gives each known capability's risk level; NOW is `now`
    in conditions. A case without inputs asks about the capability in general: conditions that read
    inputs leave their rules unmatched, as for a step whose inputs are not known yet."""
    results: list[CaseResult] = []
    for case in suite.cases:
        namespace = case.namespace or suite.namespace
        risk = case.risk or risks.get(case.capability)
        if risk is None:
            error = f"unknown capability {case.capability!r} (give `risk:` to test a capability defined elsewhere)"
            results.append(CaseResult(case, namespace, None, error))
            continue
        query = PolicyQuery(
            case.principal,
            namespace,
            case.capability,
            risk,
            irreversible=case.irreversible,
            workflow=case.workflow,
            step=case.step,
            inputs=case.inputs,
            labels=case.labels,
            params=case.params,
            now=now,
        )
        result = evaluate(policies, query)
        results.append(CaseResult(case, namespace, result))
    return results
