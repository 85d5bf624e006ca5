"""Rate limits and circuit breakers of policies against the real API server and operator: counts exact
under concurrency and kept across a restart of the operator; a breaker that opens at admission and is reset
by an approver, audited."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.audit.store import AuditStore
from controller.localcluster.devenv import DevEnvironment
from controller.policy.limits import BREAKERS, AppliedLimit, principal_key
from tests.httpserver import LoopbackAPI
from tests.integration.test_cli import airun
from tests.integration.test_governance import delete, policy
from tests.integration.test_metrics import scrape, value
from tests.integration.test_policy_conditions import example, in_namespace
from tests.integration.test_saga import steps_of, wait_terminal, wf, write
from tests.kube import Kube

STATE = "airun-system"


def as_(user: str) -> list[str]:
    return [f"--as={user}", "--as-group=system:masters"]


def create(kube: Kube, namespace: str, manifest: dict[str, Any], user: str, check: bool = True) -> Any:
    return kube.run("apply", "-n", namespace, "-f", "-", *as_(user), stdin=yaml.safe_dump(manifest), check=check)


def counted(kube: Kube, policy_ref: str, index: int, principal: str) -> list[Any]:
    from controller.api.policy import Limit

    name = AppliedLimit(policy_ref, index, Limit(capabilities=["x"], max=1, perSeconds=1), principal).name
    found = kube.run("get", "configmap", name, "-n", STATE, "-o", "json", check=False)
    if found.returncode != 0:
        return []
    return list(json.loads(json.loads(found.stdout)["data"]["entries"]))


@pytest.fixture
def workspace(operator: DevEnvironment, namespace: str) -> Path:
    path = operator.workspaces / namespace
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_rate_limit_is_exact_under_concurrency_and_counted_across_a_restart(
    kube: Kube, namespace: str, workspace: Path, operator: DevEnvironment
) -> None:
    user = f"limited-{namespace}"
    limit = {"principal": user, "capabilities": ["io.fs.write_file"], "max": 3, "perSeconds": 3600}
    kube.apply(policy("write-budget", limits=[limit]), namespace=namespace)
    time.sleep(0.5)
    # Five writes at once against a budget of three: exactly three run, the rest are RateLimited.
    create(kube, namespace, wf("burst", *(write(f"w{i}", f"w{i}.txt") for i in range(5))), user)
    obj = wait_terminal(kube, namespace, "burst")
    assert obj["status"]["reason"] == "RateLimited", obj["status"]
    steps = steps_of(obj).values()
    limited = [s for s in steps if "rate limited" in (s.get("policy") or "")]
    assert limited and all(s["decision"] == "DENY" and s.get("attempts", 0) == 0 for s in limited)
    ran = [s for s in steps if s.get("attempts")]
    assert len(ran) <= 3
    entries = counted(kube, f"Policy {namespace}/write-budget", 0, user)
    assert len(entries) == len(ran), (entries, ran)
    message = limited[0]["policy"]
    assert f"at most 3 steps of {user} on io.fs.write_file per 3600 s" in message and "frees in" in message

    operator.stop_operator()
    operator.start_operator()
    # Top up to the budget, then one more: the counts from before the restart still count.
    for i in range(3 - len(ran)):
        create(kube, namespace, wf(f"more-{i}", write("a", f"more-{i}.txt")), user)
        assert wait_terminal(kube, namespace, f"more-{i}")["status"]["phase"] == "Succeeded"
    create(kube, namespace, wf("after-restart", write("a", "late.txt")), user)
    obj = wait_terminal(kube, namespace, "after-restart")
    assert obj["status"]["reason"] == "RateLimited", obj["status"]
    assert not (workspace / "late.txt").exists()
    assert len(counted(kube, f"Policy {namespace}/write-budget", 0, user)) == 3
    # Others have budgets of their own.
    create(kube, namespace, wf("someone-else", write("a", "else.txt")), f"other-{namespace}")
    assert wait_terminal(kube, namespace, "someone-else")["status"]["phase"] == "Succeeded"


def test_the_http_budget_example_counts_per_agent(
    kube: Kube, namespace: str, operator: DevEnvironment, api: LoopbackAPI
) -> None:
    """policies/examples.yaml agent-http-budget, its budget cut to two calls: an agent's third is refused,
    another agent has its own budget, and nobody outside agents:* is counted."""
    budget = in_namespace(example("agent-http-budget"), namespace)
    assert budget["spec"]["limits"][0]["principal"] == "system:serviceaccount:agents:*"
    budget["spec"]["limits"][0]["max"] = 2
    kube.apply(budget)
    kube.apply(policy("allow-http", {"capabilities": ["net.http.*"], "action": "ALLOW"}), namespace=namespace)
    time.sleep(0.5)

    def get(name: str) -> dict[str, Any]:
        return {"name": name, "capability": "net.http.get", "inputs": {"url": f"{api.url}/items"}}

    agent, other = (f"system:serviceaccount:agents:{who}-{namespace[2:]}" for who in ("a", "b"))
    create(kube, namespace, wf("two", get("one"), get("two"), get("three")), agent)
    obj = wait_terminal(kube, namespace, "two")
    assert obj["status"]["reason"] == "RateLimited", obj["status"]
    assert sum(1 for s in steps_of(obj).values() if s.get("attempts")) == 2
    create(kube, namespace, wf("other", get("one")), other)
    assert wait_terminal(kube, namespace, "other")["status"]["phase"] == "Succeeded"
    create(kube, namespace, wf("human", get("one"), get("two"), get("three")), f"person-{namespace}")
    assert wait_terminal(kube, namespace, "human")["status"]["phase"] == "Succeeded"


def test_a_breaker_opens_refuses_new_workflows_and_is_reset_by_an_approver(
    kube: Kube, namespace: str, workspace: Path, operator: DevEnvironment
) -> None:
    user = f"flaky-{namespace}"
    kube.apply(
        policy(
            "no-deletes",
            {"capabilities": ["io.fs.delete"], "when": 'step.inputs.path.startsWith("x")', "action": "DENY"},
            breaker={"denials": 2, "perSeconds": 600},
        ),
        namespace=namespace,
    )
    time.sleep(0.5)
    opened_before = value(scrape(operator), "airun_breaker_opens_total", policy=f"Policy {namespace}/no-deletes")
    for i in range(2):
        create(kube, namespace, wf(f"denied-{i}", delete("rm", f"x{i}.txt")), user)
        assert wait_terminal(kube, namespace, f"denied-{i}")["status"]["reason"] == "PolicyDenied"
    refused = create(kube, namespace, wf("refused", write("a", "a.txt")), user, check=False)
    assert refused.returncode != 0
    assert f"circuit breaker of Policy {namespace}/no-deletes is open for {user}" in refused.stderr
    assert f"airun policy reset {user}" in refused.stderr
    opened = value(scrape(operator), "airun_breaker_opens_total", policy=f"Policy {namespace}/no-deletes")
    assert opened == opened_before + 1
    assert "BreakerOpened" in kube.run("get", "events", "-n", namespace, "-o", "json").stdout

    # Only the approver role resets it (RBAC), and only by removing the principal's entry (the webhook).
    denied = airun(operator, "policy", "reset", user, "--context", "bob")
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
    forged = kube.run(
        "patch", "configmap", BREAKERS, "-n", STATE, "--type=merge",
        "-p", json.dumps({"data": {principal_key(user): json.dumps({"principal": user, "open": {}})}}),
        "--context=alice", check=False,
    )  # fmt: skip
    assert forged.returncode != 0 and "recorded by the operator" in forged.stderr
    reset = airun(operator, "policy", "reset", user, "--context", "alice")
    assert reset.returncode == 0, reset.stderr
    assert f"reset {user}" in reset.stdout and f"Policy {namespace}/no-deletes" in reset.stdout
    create(kube, namespace, wf("accepted", write("a", "a.txt")), user)
    assert wait_terminal(kube, namespace, "accepted")["status"]["phase"] == "Succeeded"

    operator.stop_operator()  # flushes the audit writer
    operator.start_operator()
    records = [r.as_dict() for r in AuditStore(operator.audit_url).records()]
    resets = [r for r in records if r["kind"] == "breaker.reset" and r["principal"] == user]
    assert [r["actor"] for r in resets] == ["alice"]
    assert any(r["kind"] == "breaker.opened" and r["principal"] == user for r in records)
    # The decisions are audited with the rule's condition and what it saw.
    decided = [r for r in records if r["kind"] == "step.decision" and r["principal"] == user and r["step"] == "rm"]
    assert decided and decided[0]["payload"]["condition"] == {
        "rule": f"Policy {namespace}/no-deletes rule 0",
        "when": 'step.inputs.path.startsWith("x")',
        "saw": {"step.inputs.path": "x0.txt"},
    }
