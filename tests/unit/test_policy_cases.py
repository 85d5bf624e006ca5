"""`airun policy test`: expectations about policies, checked offline (pure runner and the command)."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from controller.api.capability import RiskLevel
from controller.api.policy import PolicyObject, PolicySpec, PolicyTestSuite
from controller.cli.main import main
from controller.policy.cases import run_cases

REPO = Path(__file__).resolve().parents[2]
SRE_DELETES = PolicyObject(
    name="sre-deletes",
    namespace="agents",
    spec=PolicySpec.model_validate(
        {
            "default": "ALLOW",
            "rules": [
                {"capabilities": ["io.fs.delete"], "action": "REQUIRE_APPROVAL", "approvers": {"groups": ["sre"]}}
            ],
        }
    ),
)


def suite(*cases: dict[str, object]) -> PolicyTestSuite:
    return PolicyTestSuite.model_validate({"kind": "PolicyTest", "namespace": "agents", "cases": list(cases)})


def case(**fields: object) -> dict[str, object]:
    return {"name": "c", "principal": {"user": "bob"}, "capability": "io.fs.delete", **fields}


def test_a_case_passes_only_when_decision_and_approvers_match() -> None:
    risks = {"io.fs.delete": RiskLevel.MEDIUM}
    results = run_cases(
        suite(
            case(expect="REQUIRE_APPROVAL", expectApprovers={"groups": ["sre"]}),
            case(expect="REQUIRE_APPROVAL", expectApprovers={"groups": ["admins"]}),
            case(expect="ALLOW"),
            case(expect="DENY", namespace="elsewhere"),  # no policy applies there: fail-safe DENY
        ),
        [SRE_DELETES],
        risks,
    )
    assert [r.passed for r in results] == [True, False, False, True]
    assert "expected approvers" in results[1].failures[0]
    assert results[2].failures == ["expected ALLOW, got REQUIRE_APPROVAL"]


def test_an_unknown_capability_fails_with_a_hint_unless_its_risk_is_given() -> None:
    results = run_cases(
        suite(
            case(capability="payments.charge", expect="ALLOW"),
            case(capability="payments.charge", risk="LOW", expect="ALLOW"),
        ),
        [SRE_DELETES],
        {},
    )
    assert not results[0].passed and "give `risk:`" in results[0].failures[0]
    assert results[1].passed


def test_the_shipped_policy_tests_pass() -> None:
    result = CliRunner().invoke(main, ["policy", "test", str(REPO / "policies/tests/examples.test.yaml")])
    assert result.exit_code == 0, result.output
    assert "11 passed, 0 failed" in result.output


def test_a_failing_case_exits_1_and_names_the_difference(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(
        yaml.safe_dump(
            {
                "kind": "PolicyTest",
                "policies": [str(REPO / "policies/baseline.yaml")],
                "cases": [case(capability="k8s.delete", expect="ALLOW")],
            }
        )
    )
    result = CliRunner().invoke(main, ["policy", "test", str(tmp_path / "t.yaml")])
    assert result.exit_code == 1
    assert "expected ALLOW, got REQUIRE_APPROVAL" in result.output and "0 passed, 1 failed" in result.output


def test_a_malformed_suite_is_refused_with_the_field_named(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(
        yaml.safe_dump({"kind": "PolicyTest", "policies": [], "cases": [case(expect="MAYBE", principal={"usr": "x"})]})
    )
    result = CliRunner().invoke(main, ["policy", "test", str(tmp_path / "t.yaml")])
    assert result.exit_code == 1
    assert "cases.0.principal.usr: Extra inputs are not permitted" in result.output
    assert "cases.0.expect: Input should be" in result.output
