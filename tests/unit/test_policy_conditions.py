"""`when:` conditions (CEL) of policy rules: compiled and checked at apply, decided on the step's inputs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from controller.api.capability import RiskLevel
from controller.api.policy import PolicyObject, PolicySpec, Principal
from controller.api.workflow import Decision
from controller.engine.steps import condition_of as _condition_of
from controller.operator.admission import policy_problems
from controller.policy.conditions import MAX_SOURCE, ConditionError, compile_condition
from controller.policy.evaluate import PolicyQuery, evaluate

AGENT = Principal(user="system:serviceaccount:agents:planner", groups=["system:serviceaccounts"])
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def policy(*rules: dict[str, Any], default: str = "ALLOW") -> PolicyObject:
    return PolicyObject(name="p", spec=PolicySpec.model_validate({"default": default, "rules": list(rules)}))


def decide(p: PolicyObject, capability: str, inputs: dict[str, Any] | None, **kw: Any) -> Any:
    query = PolicyQuery(AGENT, "agents", capability, RiskLevel.LOW, inputs=inputs, now=NOW, **kw)
    return evaluate([p], query)


PROD_DELETE = {
    "capabilities": ["io.fs.delete"],
    "when": 'step.inputs.path.startsWith("prod/")',
    "action": "DENY",
}


def test_a_condition_tells_a_delete_under_prod_from_one_in_scratch() -> None:
    p = policy(PROD_DELETE)
    assert decide(p, "io.fs.delete", {"path": "prod/db"}).decision is Decision.DENY
    assert decide(p, "io.fs.delete", {"path": "scratch/tmp.txt"}).decision is Decision.ALLOW


def test_the_deciding_verdict_carries_the_condition_and_the_values_it_saw() -> None:
    result = decide(policy(PROD_DELETE), "io.fs.delete", {"path": "prod/db", "other": "x"})
    assert result.deciding.when == PROD_DELETE["when"]
    assert result.deciding.seen == {"step.inputs.path": "prod/db"}
    assert "when step.inputs.path" in result.reason


def test_what_the_condition_saw_is_redacted_for_status_and_audit() -> None:
    p = policy({"capabilities": ["net.http.request"], "when": 'step.inputs.headers.token != ""', "action": "DENY"})
    result = decide(p, "net.http.request", {"headers": {"token": "s3cr3t-value"}})
    assert result.decision is Decision.DENY
    record = _condition_of(result)
    assert record is not None and record.saw is not None
    assert "s3cr3t-value" not in repr(record.saw) and record.saw == {"step.inputs.headers.token": "***"}


def test_a_condition_that_fails_on_the_step_is_a_deny_quoting_the_error() -> None:
    p = policy({"capabilities": ["io.fs.*"], "when": 'step.inputs.path.startsWith("prod/")', "action": "ALLOW"})
    result = decide(p, "io.fs.list_dir", {"dir": "x"})
    assert result.decision is Decision.DENY
    assert "its condition failed" in result.reason and "path" in result.reason


def test_inputs_not_known_yet_leave_a_conditional_rule_unmatched() -> None:
    # A compensation checked before its step ran: decided again, on its inputs, right before it runs.
    assert decide(policy(PROD_DELETE), "io.fs.delete", None).decision is Decision.ALLOW


def test_conditions_read_principal_namespace_workflow_and_now() -> None:
    p = policy(
        {
            "capabilities": ["*"],
            "when": (
                'principal.user.startsWith("system:serviceaccount:agents:") && "system:serviceaccounts" in '
                'principal.groups && namespace == "agents" && workflow.labels.env == "prod" && '
                'workflow.params.size > 2 && now > timestamp("2026-01-01T00:00:00Z") && step.risk == "LOW"'
            ),
            "action": "DENY",
        }
    )
    labels, params = {"env": "prod"}, {"size": 3}
    assert decide(p, "sys.sleep", {}, labels=labels, params=params).decision is Decision.DENY
    assert decide(p, "sys.sleep", {}, labels={"env": "dev"}, params=params).decision is Decision.ALLOW


def test_the_first_matching_rule_wins_only_where_its_condition_holds() -> None:
    p = policy(
        {"capabilities": ["k8s.apply"], "when": 'step.inputs.manifest.kind == "ConfigMap"', "action": "ALLOW"},
        {
            "capabilities": ["k8s.apply"],
            "when": 'step.inputs.manifest.kind in ["ClusterRoleBinding", "RoleBinding"]',
            "action": "REQUIRE_APPROVAL",
            "approvers": {"groups": ["sre"], "count": 2},
        },
        default="DENY",
    )
    assert decide(p, "k8s.apply", {"manifest": {"kind": "ConfigMap"}}).decision is Decision.ALLOW
    asked = decide(p, "k8s.apply", {"manifest": {"kind": "RoleBinding"}})
    assert asked.decision is Decision.REQUIRE_APPROVAL and asked.deciding.approvers.count == 2
    assert decide(p, "k8s.apply", {"manifest": {"kind": "Secret"}}).decision is Decision.DENY


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('step.inputs.path.startsWith("prod/"', "line 1, column"),
        ("stp.inputs.path == 'x'", "unknown variable stp"),
        ("launch_missiles(step)", "unknown function launch_missiles"),
        ("principal.user > 3", "No such overload"),
        ("1 + 'a' == 'b'", "No such overload"),
        ("[1].all(a, [2].all(b, [3].all(c, a < b)))", "nests 3 comprehension macros"),
        ("step.inputs.items.all(a, step.inputs.items.exists(b, a == b))", "nests 2 comprehension macros"),
        ("'" + "x" * MAX_SOURCE + "' == ''", f"at most {MAX_SOURCE}"),
    ],
)
def test_a_bad_condition_is_refused_with_what_is_wrong(source: str, message: str) -> None:
    with pytest.raises(ConditionError, match=message.replace("(", r"\(")):
        compile_condition(source)
    problems = policy_problems({"rules": [{"capabilities": ["*"], "when": source, "action": "DENY"}]})
    assert len(problems) == 1 and problems[0].startswith("spec.rules[0].when: ") and message in problems[0]


def test_a_syntax_error_names_its_line_and_column() -> None:
    with pytest.raises(ConditionError, match=r"line 2, column 3"):
        compile_condition("has(step.inputs.path) &&\n  )")


def test_compiled_programs_are_cached() -> None:
    assert compile_condition('step.name == "a"') is compile_condition('step.name == "a"')


def test_good_conditions_pass_admission() -> None:
    assert policy_problems({"rules": [PROD_DELETE], "limits": [], "breaker": {"denials": 3, "perSeconds": 60}}) == []


def test_a_comprehension_macro_inside_a_string_is_not_counted() -> None:
    compile_condition('step.name == ".all(.all(.all(" && [1].all(x, x > 0)')


def test_namespace_a_reserved_word_of_cel_is_the_documented_variable_outside_strings() -> None:
    p = policy({"capabilities": ["*"], "when": 'namespace == "agents" && step.name != "namespace"', "action": "DENY"})
    result = decide(p, "sys.sleep", {}, step="s")
    assert result.decision is Decision.DENY and result.deciding.seen == {"namespace": "agents", "step.name": "s"}
    with pytest.raises(ConditionError, match="line 1, column 14"):
        compile_condition("namespace == ")


def test_a_long_value_is_redacted_before_it_is_cut_to_size() -> None:
    p = policy({"capabilities": ["net.http.request"], "when": "size(step.inputs.headers) > 0", "action": "DENY"})
    headers = {"Authorization": "Bearer " + "s" * 400, "X-Trace": "t" * 300}
    record = _condition_of(decide(p, "net.http.request", {"headers": headers}))
    assert record is not None and record.saw is not None
    text = record.saw["step.inputs.headers"]
    assert isinstance(text, str) and len(text) <= 256 and "sss" not in text and "***" in text


def test_conditions_of_one_decision_share_its_variables_each_seeing_all_it_reads() -> None:
    p = policy(
        {"capabilities": ["io.fs.delete"], "when": 'step.inputs.path == "nope"', "action": "DENY"},
        {"capabilities": ["io.fs.delete"], "when": "size(step.inputs) == 2 && !has(step.inputs.x)", "action": "DENY"},
        {"capabilities": ["io.fs.delete"], "when": "[1].all(step, step > 0) && step.name != ''", "action": "ALLOW"},
    )
    result = decide(p, "io.fs.delete", {"path": "a", "mode": "b"})
    assert result.decision is Decision.DENY and result.deciding.rule == 1
    assert result.deciding.seen == {"step.inputs": {"path": "a", "mode": "b"}}  # step.inputs.x: not there


def test_a_hostile_regex_cannot_make_a_decision_slow() -> None:
    """`matches` runs a linear-time engine: the classic catastrophic pattern on a long input stays fast."""
    import time

    p = policy({"capabilities": ["*"], "when": 'step.inputs.path.matches("^(a+)+$")', "action": "DENY"})
    started = time.perf_counter()
    result = decide(p, "io.fs.delete", {"path": "a" * 50_000 + "!"})
    assert result.decision is Decision.ALLOW and time.perf_counter() - started < 1.0
