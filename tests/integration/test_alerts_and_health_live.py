"""What platform teams see from outside, on the real operator: the Argo CD health of live Workflows and Approvals
(the Lua checks of charts/airun/argocd run by gopher-lua), and the chart's alert rules evaluated by promtool on the
series the operator's metrics endpoint actually serves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.api.workflow import WorkflowPhase
from controller.localcluster.devenv import DevEnvironment
from tests.argocd_health import Health, assess, health_script
from tests.integration.test_governance import decide, wait_phase
from tests.integration.test_metrics import scrape
from tests.integration.test_saga import steps_of, wait_terminal, wf, write
from tests.kube import Kube
from tests.unit.test_alert_rules import RULES, promtool

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def failing(name: str, *deps: str, attempts: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "capability": "test.fail",
        "dependsOn": list(deps),
        "retry": {"limit": attempts - 1, "backoffSeconds": 0.05, "factor": 1},
    }


class Scenario:
    """One workflow per outcome, run once for the module (they take seconds), in a namespace of their own."""

    def __init__(self, kube: Kube, operator: DevEnvironment) -> None:
        self.kube, self.namespace = kube, f"t-{uuid.uuid4().hex[:8]}"
        kube.create_namespace(self.namespace)
        self.before = scrape(operator)
        gate = {"name": "gate", "type": "Approval"}
        undo_fails = write("a", "stuck.txt", compensation={"capability": "test.fail", "inputs": {}})
        for manifest in (
            wf("ok", write("a", "ok.txt")),
            wf("undone", write("a", "undone.txt"), failing("boom", "a", attempts=6)),
            wf("stuck", undo_fails, failing("boom", "a")),
            wf("waiting", gate),
            wf("approved", gate),
            wf("rejected", write("a", "rejected.txt"), {**gate, "dependsOn": ["a"]}),
        ):
            kube.apply(manifest, namespace=self.namespace, as_="bob")
        for name, decision in (("approved", "Approved"), ("rejected", "Rejected")):
            approval = steps_of(wait_phase(kube, self.namespace, name, WorkflowPhase.AWAITING_APPROVAL))["gate"][
                "approval"
            ]
            code, err = decide(kube, self.namespace, approval, decision, "alice")
            assert code == 0, err
        self.workflows = {
            name: wait_terminal(kube, self.namespace, name)
            for name in ("ok", "undone", "stuck", "approved", "rejected")
        }
        self.workflows["waiting"] = wait_phase(kube, self.namespace, "waiting", WorkflowPhase.AWAITING_APPROVAL)
        self.after = scrape(operator)

    def approval(self, workflow: str) -> dict[str, Any]:
        return self.kube.get("approval", steps_of(self.workflows[workflow])["gate"]["approval"], self.namespace)


@pytest.fixture(scope="module")
def scenario(kube: Kube, operator: DevEnvironment) -> Iterator[Scenario]:
    yield Scenario(kube, operator)


def test_argo_cd_health_of_live_workflows(scenario: Scenario) -> None:
    health = {name: assess(health_script("aifirst.dev", "Workflow"), obj) for name, obj in scenario.workflows.items()}
    assert {name: h.status for name, h in health.items()} == {
        "ok": "Healthy",
        "undone": "Degraded",
        "stuck": "Degraded",
        "waiting": "Suspended",
        "approved": "Healthy",
        "rejected": "Degraded",
    }
    assert health["ok"] == Health("Healthy", "Succeeded (1/1 steps succeeded)")
    assert health["undone"].message.startswith("Compensated (StepFailed): ")
    assert health["stuck"].message.startswith("CompensationFailed (StepFailed): ")
    assert health["rejected"].message.startswith("Compensated (ApprovalRejected): ")
    approval = steps_of(scenario.workflows["waiting"])["gate"]["approval"]
    assert health["waiting"] == Health("Suspended", f"Awaiting approval: waiting for {approval}")


def test_argo_cd_health_of_live_approvals(scenario: Scenario) -> None:
    check = health_script("aifirst.dev", "Approval")
    waiting = scenario.approval("waiting")
    assert assess(check, waiting) == Health(
        "Suspended",
        f"Waiting for a decision on step gate of workflow waiting (expires {waiting['spec']['expiresAt']})",
    )
    assert assess(check, scenario.approval("approved")) == Health("Healthy", "Approved by alice")
    assert assess(check, scenario.approval("rejected")) == Health("Degraded", "Rejected by alice")


def series(scenario: Scenario) -> list[dict[str, str]]:
    """The scrape as promtool input series, labelled as the chart's ServiceMonitor labels them. Gauges of this
    namespace hold their value; counters grow by what this scenario added to them every minute (a steady state)."""
    result = [{"series": 'up{job="airun-operator", instance="op:9090"}', "values": "1x100"}]
    for (name, labels), value in sorted(scenario.after.items()):
        labelled = dict(labels)
        if name in ("airun_workflows", "airun_approvals_pending", "airun_approval_oldest_pending_seconds"):
            if labelled.get("namespace") != scenario.namespace:
                continue
            # an age grows a minute a minute while the approval stays pending; other gauges hold
            values = f"{value:g}+60x100" if name.endswith("_seconds") else f"{value:g}x100"
        elif name.endswith("_total"):
            values = f"0+{value - scenario.before.get((name, labels), 0):g}x100"
        else:
            continue  # histograms: no rule uses them
        matchers = ", ".join(
            f'{k}="{v}"' for k, v in {**labelled, "job": "airun-operator", "instance": "op:9090"}.items()
        )
        result.append({"series": f"{name}{{{matchers}}}", "values": values})
    return result


def test_alerts_fire_on_what_the_operator_serves(scenario: Scenario, tmp_path: Path) -> None:
    """The alerts that should fire after this scenario do, on the real series (names, label names and label
    values as the operator writes them); the others stay quiet."""
    firing = 'count by (alertname) (ALERTS{alertstate="firing"})'
    expected = [
        "AirunApprovalPendingTooLong",
        "AirunCompensationAttemptsFailing",
        "AirunCompensationFailed",
        "AirunStepFailureRateHigh",
    ]
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series(scenario),
                "promql_expr_test": [
                    {
                        "expr": firing,
                        "eval_time": "70m",
                        "exp_samples": [{"labels": f'{{alertname="{name}"}}', "value": 1} for name in expected],
                    },
                    {
                        "expr": f'ALERTS{{alertstate="firing", namespace="{scenario.namespace}"}}',
                        "eval_time": "70m",
                        "exp_samples": [
                            {
                                "labels": f'ALERTS{{alertname="{name}", alertstate="firing", '
                                f'namespace="{scenario.namespace}", severity="{severity}"}}',
                                "value": 1,
                            }
                            for name, severity in (
                                ("AirunApprovalPendingTooLong", "warning"),
                                ("AirunCompensationFailed", "critical"),
                            )
                        ],
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "70m", "alertname": name, "exp_alerts": []}
                    for name in ("AirunReconcileErrors", "AirunWorkflowsNotStarting", "AirunOperatorDown")
                ],
            }
        ],
    }
    path = tmp_path / "live.test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    result = promtool("test", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr + path.read_text()
