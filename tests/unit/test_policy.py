"""Policy evaluation (pure)."""

from __future__ import annotations

from controller.api.capability import RiskLevel
from controller.api.policy import PolicyObject, PolicySpec, Principal
from controller.api.workflow import Decision
from controller.policy.evaluate import PolicyQuery, evaluate

AGENT = Principal(user="system:serviceaccount:agents:planner", groups=["system:serviceaccounts"])
ALICE = Principal(user="alice", groups=["approvers", "sre"])


def policy(name: str, rules: list[dict[str, object]], namespace: str | None = None, **spec: object) -> PolicyObject:
    return PolicyObject(name=name, namespace=namespace, spec=PolicySpec.model_validate({"rules": rules, **spec}))


def decide(
    policies: list[PolicyObject],
    capability: str = "io.fs.write_file",
    risk: RiskLevel = RiskLevel.MEDIUM,
    who: Principal = AGENT,
    namespace: str = "agents",
    **kw: bool,
) -> Decision:
    return evaluate(policies, PolicyQuery(who, namespace, capability, risk, **kw)).decision


def test_no_policy_denies() -> None:
    assert decide([]) is Decision.DENY


def test_first_match_wins_inside_a_policy() -> None:
    p = policy("p", [{"capabilities": ["io.fs.*"], "action": "ALLOW"}, {"capabilities": ["*"], "action": "DENY"}])
    assert decide([p]) is Decision.ALLOW
    assert decide([p], capability="net.http.request") is Decision.DENY


def test_most_restrictive_wins_across_policies() -> None:
    allow = policy("allow", [{"capabilities": ["*"], "action": "ALLOW"}])
    ask = policy("ask", [{"capabilities": ["io.fs.delete*"], "action": "REQUIRE_APPROVAL"}], default="ALLOW")
    deny = policy("deny", [{"capabilities": ["io.fs.delete"], "action": "DENY"}], namespace="agents", default="ALLOW")
    assert decide([allow, ask], capability="io.fs.delete") is Decision.REQUIRE_APPROVAL
    assert decide([allow, ask, deny], capability="io.fs.delete") is Decision.DENY
    # A Policy of another namespace does not apply.
    assert decide([allow, ask, deny], capability="io.fs.delete", namespace="team-a") is Decision.REQUIRE_APPROVAL


def test_principal_globs_and_groups() -> None:
    p = policy(
        "p",
        [
            {"principal": "system:serviceaccount:agents:*", "capabilities": ["*"], "action": "ALLOW"},
            {"principal": "group:sre", "capabilities": ["*"], "action": "ALLOW"},
        ],
    )
    assert decide([p]) is Decision.ALLOW
    assert decide([p], who=ALICE) is Decision.ALLOW
    assert decide([p], who=Principal(user="bob", groups=["developers"])) is Decision.DENY


def test_risk_levels_filter_rules() -> None:
    p = policy("p", [{"capabilities": ["*"], "riskLevels": ["LOW"], "action": "ALLOW"}])
    assert decide([p], risk=RiskLevel.LOW) is Decision.ALLOW
    assert decide([p], risk=RiskLevel.MEDIUM) is Decision.DENY


def test_high_risk_escalates_and_critical_always_asks() -> None:
    p = policy("p", [{"capabilities": ["*"], "action": "ALLOW"}])
    assert decide([p], risk=RiskLevel.HIGH) is Decision.REQUIRE_APPROVAL
    assert decide([p], risk=RiskLevel.CRITICAL) is Decision.REQUIRE_APPROVAL
    assert decide([p], irreversible=True) is Decision.REQUIRE_APPROVAL
    deny = policy("d", [{"capabilities": ["*"], "action": "DENY"}])
    assert decide([deny], risk=RiskLevel.CRITICAL) is Decision.DENY


def test_audit_mode_records_but_does_not_enforce() -> None:
    audit = policy("audit", [{"capabilities": ["*"], "action": "DENY"}], mode="Audit")
    result = evaluate([audit], PolicyQuery(AGENT, "agents", "io.fs.write_file", RiskLevel.MEDIUM))
    assert result.decision is Decision.ALLOW
    assert [v.decision for v in result.audit_only] == [Decision.DENY]


def test_decision_names_the_policy_and_rule() -> None:
    p = policy("baseline", [{"capabilities": ["x.*"], "action": "DENY"}, {"capabilities": ["*"], "action": "ALLOW"}])
    result = evaluate([p], PolicyQuery(AGENT, "agents", "io.fs.read_file", RiskLevel.LOW))
    assert result.reason == "ClusterPolicy baseline rule 1: ALLOW"


def test_who_may_decide_an_approval() -> None:
    from controller.api.policy import Approvers
    from controller.policy.approvers import decision_refusal

    sre = Approvers(groups=["sre"])
    assert "no self-approval" in (decision_refusal(requested_by="bob", approvers=None, user="bob", groups=[]) or "")
    assert decision_refusal(requested_by="bob", approvers=None, user="alice", groups=[]) is None
    assert decision_refusal(requested_by="bob", approvers=sre, user="alice", groups=["sre"]) is None
    assert decision_refusal(requested_by="bob", approvers=Approvers(users=["carol"]), user="carol", groups=[]) is None
    refusal = decision_refusal(requested_by="bob", approvers=sre, user="alice", groups=["approvers"])
    assert refusal == "alice is not among the approvers the policy names (groups sre)"
