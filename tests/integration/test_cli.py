"""The airun command as a user runs it: the kubeconfig identity, clear errors, meaningful exit codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from controller.localcluster.devenv import DevEnvironment
from tests.kube import Kube

REPO = Path(__file__).resolve().parents[2]
NO_DELETES = {
    "apiVersion": "aifirst.dev/v1alpha1",
    "kind": "Policy",
    "metadata": {"name": "no-deletes"},
    "spec": {"default": "ALLOW", "rules": [{"capabilities": ["io.fs.delete"], "action": "DENY"}]},
}


def airun(env: DevEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "KUBECONFIG": str(env.kubeconfig)},
    )


def test_run_follows_and_the_exit_code_says_how_it_ended(env: DevEnvironment, namespace: str) -> None:
    ok = airun(env, "run", str(REPO / "examples" / "hello.yaml"), "--context", "bob", "-n", namespace)
    assert ok.returncode == 0, ok.stderr
    assert "greet: Succeeded" in ok.stdout and "principal: bob" in ok.stdout
    failed = airun(env, "run", str(REPO / "examples" / "saga.yaml"), "--context", "bob", "-n", namespace)
    assert failed.returncode == 1 and "Compensated (StepFailed)" in failed.stdout


def test_approve_uses_the_callers_identity(env: DevEnvironment, kube: Kube, namespace: str) -> None:
    started = airun(
        env, "run", str(REPO / "examples" / "approval.yaml"), "--no-wait", "--context", "bob", "-n", namespace
    )
    assert started.returncode == 0, started.stderr
    kube.wait_for("approval", "approval-gate.review", namespace, lambda o: True, what="the approval")
    refused = airun(env, "approve", "approval-gate.review", "--context", "bob", "-n", namespace)
    assert refused.returncode != 0 and 'User "bob" cannot patch resource "approvals"' in refused.stderr
    approved = airun(  # the workflow's name will do: it waits for one approval
        env, "approve", "approval-gate", "--reason", "reviewed", "--context", "alice", "-n", namespace
    )
    assert approved.returncode == 0, approved.stderr
    assert "approval approval-gate.review: Approved" in approved.stdout
    kube.wait_for("wf", "approval-gate", namespace, lambda o: o.get("status", {}).get("phase") == "Succeeded")
    status = airun(env, "status", "approval-gate", "--context", "alice", "-n", namespace)
    assert "approval: approval-gate.review" in status.stdout
    assert kube.get("approval", "approval-gate.review", namespace)["status"]["decidedBy"] == "alice"


def test_kubectl_finds_it_as_a_plugin(env: DevEnvironment, kube: Kube, namespace: str) -> None:
    """`kubectl airun ...`: kubectl runs kubectl-airun from PATH (installed beside airun by pip)."""
    run = airun(env, "run", str(REPO / "examples" / "approval.yaml"), "--no-wait", "--context", "bob", "-n", namespace)
    assert run.returncode == 0, run.stderr
    kube.wait_for("approval", "approval-gate.review", namespace, lambda o: True, what="the approval")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    plugin = subprocess.run(
        [str(kube.kubectl_binary), "airun", "reject", "approval-gate.review", "--context", "alice", "-n", namespace],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "KUBECONFIG": str(env.kubeconfig), "PATH": path},
    )
    assert plugin.returncode == 0, plugin.stderr
    assert "approval-gate.review: Rejected" in plugin.stdout
    assert kube.get("approval", "approval-gate.review", namespace)["status"]["decidedBy"] == "alice"


def test_errors_are_clear(env: DevEnvironment, namespace: str, tmp_path: Path) -> None:
    missing = airun(env, "status", "no-such-workflow", "--context", "bob", "-n", namespace)
    assert missing.returncode != 0 and 'workflows.aifirst.dev "no-such-workflow" not found' in missing.stderr
    not_a_workflow = airun(env, "run", str(REPO / "policies" / "baseline.yaml"), "--context", "bob")
    assert not_a_workflow.returncode != 0 and "does not hold one Workflow" in not_a_workflow.stderr
    no_events = airun(env, "events", "no-such-workflow", "--context", "bob", "-n", namespace)
    assert no_events.returncode != 0 and "not found" in no_events.stderr
    unreachable = tmp_path / "kubeconfig"
    unreachable.write_text(re.sub(r"https://127\.0\.0\.1:\d+", "https://127.0.0.1:1", env.kubeconfig.read_text()))
    down = airun(env, "status", "x", "--kubeconfig", str(unreachable))
    assert down.returncode == 1 and "cannot reach the API server" in down.stderr and "Traceback" not in down.stderr


def test_capabilities_and_policy_explain(env: DevEnvironment, kube: Kube, namespace: str) -> None:
    listed = airun(env, "capabilities", "list", "--context", "bob")
    assert listed.returncode == 0 and "io.fs.write_file" in listed.stdout
    # internal (undo-only) capabilities are not listed as capabilities of their own
    assert not any(line.startswith("│ io.fs.restore ") for line in listed.stdout.splitlines())
    inspected = airun(env, "capabilities", "inspect", "net.http.request", "--local")
    assert "fromStep: true" in inspected.stdout and "network.write" in inspected.stdout
    kube.apply(NO_DELETES, namespace=namespace)
    explained = airun(env, "policy", "explain", "io.fs.delete", "--context", "bob", "-n", namespace)
    assert explained.returncode == 0, explained.stderr
    assert "bob" in explained.stdout and ": DENY" in explained.stdout
    assert f"Policy {namespace}/no-deletes rule 0: DENY" in explained.stdout
    agent = airun(env, "policy", "explain", "io.fs.delete", "--context", "agent", "-n", "agents")
    assert agent.returncode != 0 and "cannot read the policies that apply" in agent.stderr


def test_policy_test_checks_the_clusters_policies(
    env: DevEnvironment, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    kube.apply(NO_DELETES, namespace=namespace)
    cases = [
        {"name": "no deletes here", "principal": {"user": "bob"}, "capability": "io.fs.delete", "expect": "DENY"},
        {"name": "reads", "principal": {"user": "bob"}, "capability": "io.fs.read_file", "expect": "ALLOW"},
        {"name": "wrong on purpose", "principal": {"user": "bob"}, "capability": "io.fs.stat", "expect": "DENY"},
    ]
    suite = tmp_path / "cluster.test.yaml"
    suite.write_text(yaml.safe_dump({"kind": "PolicyTest", "namespace": namespace, "cases": cases}))
    result = airun(env, "policy", "test", str(suite), "--context", "bob")
    assert result.returncode == 1, result.stderr
    assert "the cluster's policies" in result.stdout and "2 passed, 1 failed" in result.stdout
    assert "expected DENY, got ALLOW" in result.stdout


def test_plan_is_a_dry_run_with_the_callers_policies(env: DevEnvironment, kube: Kube, namespace: str) -> None:
    kube.apply(NO_DELETES, namespace=namespace)
    denied = airun(env, "plan", str(REPO / "examples" / "denied.yaml"), "--context", "bob", "-n", namespace)
    assert denied.returncode == 1
    assert f"Policy {namespace}/no-deletes rule 0: DENY" in denied.stdout
    ok = airun(env, "plan", str(REPO / "examples" / "saga.yaml"), "--context", "bob", "-n", namespace)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "saga/config.json" in ok.stdout  # inputs rendered with params
    assert "write_report (io.fs.restore) <- write_config (io.fs.restore)" in ok.stdout
    assert kube.run("get", "wf", "-n", namespace, "-o", "name").stdout == ""  # nothing was created


def test_plan_names_what_is_wrong(env: DevEnvironment, namespace: str, tmp_path: Path) -> None:
    def plan(spec: dict[str, object]) -> subprocess.CompletedProcess[str]:
        manifest = {"apiVersion": "aifirst.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "w"}, "spec": spec}
        (tmp_path / "w.yaml").write_text(yaml.safe_dump(manifest))
        return airun(env, "plan", str(tmp_path / "w.yaml"), "--context", "bob", "-n", namespace)

    shapeless = plan({"stepz": []})
    assert shapeless.returncode == 1 and "spec.steps: Field required" in shapeless.stderr
    assert "Traceback" not in shapeless.stderr
    step = {"name": "a", "capability": "io.fs.write_file", "inputs": {"path": "{{ params.nope }}", "content": "x"}}
    typo = plan({"steps": [step]})
    assert typo.returncode == 1 and "template error" in typo.stdout and "nope" in typo.stdout
    copy = {"name": "b", "capability": "io.fs.write_file", "inputs": {"path": "{{ steps.a.outputs.path }}.copy"}}
    copy["inputs"]["content"] = "x"
    racy = plan({"steps": [{**step, "inputs": {"path": "a.txt", "content": "a"}}, copy]})
    assert racy.returncode == 1
    assert "invalid: step 'b' reads steps.a but does not depend on a" in racy.stdout, racy.stdout
    assert "add dependsOn: [a]" in racy.stdout
