"""`airun policy explain`, `airun plan`, `airun approve` and `airun status` with conditions, quorums and
limits, as a user runs them."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_cli import airun
from tests.integration.test_governance import policy, wait_phase
from tests.integration.test_saga import steps_of, wf
from tests.kube import Kube

RULES = policy(
    "conditions",
    {"capabilities": ["io.fs.delete"], "when": 'step.inputs.path.startsWith("prod/")', "action": "DENY"},
    {
        "capabilities": ["io.fs.delete"],
        "action": "REQUIRE_APPROVAL",
        "approvers": {"groups": ["approvers", "system:masters"], "count": 2},
    },
    limits=[{"principal": "bob", "capabilities": ["io.fs.write_file"], "max": 50, "perSeconds": 60}],
)


def test_explain_and_plan_decide_on_inputs(
    operator: DevEnvironment, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    kube.apply(RULES, namespace=namespace)
    denied = airun(
        operator, "policy", "explain", "io.fs.delete", "--input", "path=prod/db", "--context", "bob", "-n", namespace
    )
    assert denied.returncode == 0, denied.stderr
    assert ": DENY" in denied.stdout and 'its condition saw: step.inputs.path = "prod/db"' in denied.stdout
    asked = airun(
        operator, "policy", "explain", "io.fs.delete", "--input", "path=tmp/x", "--context", "bob", "-n", namespace
    )
    assert "REQUIRE_APPROVAL" in asked.stdout and "2 distinct people must approve" in asked.stdout, asked.stdout
    limited = airun(operator, "policy", "explain", "io.fs.write_file", "--context", "bob", "-n", namespace)
    assert "counted by Policy" in limited.stdout and "at most 50 steps of bob" in limited.stdout, limited.stdout

    manifest = wf(
        "planned",
        {"name": "rm", "capability": "io.fs.delete", "inputs": {"path": "prod/{{ params.db }}"}},
        params={"db": "orders"},
    )
    file = tmp_path / "wf.yaml"
    file.write_text(yaml.safe_dump(manifest))
    planned = airun(operator, "plan", str(file), "--context", "bob", "-n", namespace)
    assert planned.returncode == 1, planned.stdout + planned.stderr  # a DENY: it could not run as it is
    assert "DENY" in planned.stdout and "prod/orders" in planned.stdout


def test_approve_and_status_show_the_tally(operator: DevEnvironment, kube: Kube, namespace: str) -> None:
    kube.apply(RULES, namespace=namespace)
    time.sleep(0.5)
    (operator.workspaces / namespace).mkdir(parents=True, exist_ok=True)
    (operator.workspaces / namespace / "x.txt").write_text("x")
    gated = {"name": "rm", "capability": "io.fs.delete", "inputs": {"path": "x.txt"}}
    kube.apply(wf("tally", gated), namespace=namespace, as_="bob")
    obj = wait_phase(kube, namespace, "tally", "AwaitingApproval")
    name = steps_of(obj)["rm"]["approval"]
    first = airun(operator, "approve", name, "--context", "alice", "-n", namespace)
    assert first.returncode == 0, first.stderr
    assert "your Approved is recorded, 1 of 2 approvals (alice)" in first.stdout, first.stdout
    kube.wait_for("approval", name, namespace, lambda o: (o.get("status") or {}).get("decisions"), what="a vote")
    status = airun(operator, "status", "tally", "--context", "alice", "-n", namespace)
    assert "1 of 2 approvals (alice)" in status.stdout, status.stdout
    second = airun(operator, "approve", name, "--context", "admin", "-n", namespace)
    assert second.returncode == 0, second.stderr
    assert "Approved (2 of 2 approvals (alice, admin))" in second.stdout, second.stdout
