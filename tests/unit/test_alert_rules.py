"""The alert rules of the chart (charts/airun/files/prometheus-rules.yaml) checked with promtool, Prometheus'
own rule checker and unit-test runner (built from tools/promtool), and against the metrics the operator exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.api.workflow import WorkflowPhase
from controller.observability.metrics import Metrics
from tests.gotools import REPO, tool

RULES = REPO / "charts" / "airun" / "files" / "prometheus-rules.yaml"
RULE_TESTS = sorted((REPO / "tests" / "alerts").glob("*.test.yaml"))
OPERATIONS = REPO / "docs" / "operations.md"
RUNBOOKS = "https://github.com/aifirst/airun/blob/main/docs/operations.md#"
# Series Prometheus makes itself for every target, not the operator.
SCRAPE_SERIES = {"up"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("promtool", "promtool")), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    assert RULE_TESTS
    result = promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_can_fail(tmp_path: Path) -> None:
    """The unit tests are not vacuous: an alert that stops firing (a threshold raised) fails them."""
    (tmp_path / "rules.yaml").write_text(RULES.read_text().replace("> 0.25", "> 0.75"))
    tests = tmp_path / "airun.test.yaml"
    tests.write_text(RULE_TESTS[0].read_text().replace("../../charts/airun/files/prometheus-rules.yaml", "rules.yaml"))
    result = promtool("test", "rules", tests)
    assert result.returncode != 0 and "AirunStepFailureRateHigh" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), "alerts never seen firing in tests/alerts"
    assert names - silent == set(), "alerts never seen quiet in tests/alerts"


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_is_documented(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    annotations = rule["annotations"]
    assert annotations["summary"] and annotations["description"]
    anchor = annotations["runbook_url"].removeprefix(RUNBOOKS)
    assert annotations["runbook_url"] == RUNBOOKS + anchor
    # GitHub's anchor of a heading "### AirunSomething" is "airunsomething".
    headings = {
        line.lstrip("#").strip().lower() for line in OPERATIONS.read_text().splitlines() if line.startswith("#")
    }
    assert anchor == rule["alert"].lower() and anchor in headings, f"no heading for #{anchor} in docs/operations.md"


def exported_metrics() -> set[str]:
    """Names of the series a scrape of the operator shows: its Metrics registry, live gauges included, with
    every labelled series touched once so that it appears (as prometheus_client shows a label set only once used)."""
    metrics = Metrics()
    metrics.watch(lambda: [("ns", WorkflowPhase.RUNNING.value)], lambda: [("ns", None)])
    for collector in vars(metrics).values():
        labelnames = getattr(collector, "_labelnames", None)
        if labelnames:
            collector.labels(*["x"] * len(labelnames))
    text = generate_latest(metrics.registry).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_rules_use_only_metrics_the_operator_exports() -> None:
    """A metric renamed in controller/observability/metrics.py (or misspelt in a rule) fails here."""
    exported = exported_metrics()
    assert {"airun_workflows", "airun_approvals_pending", "airun_steps_total"} <= exported
    used: set[str] = set()
    for rule in alerts():
        # Metric names are the identifiers outside quoted label values and outside `by (...)` label lists.
        expr = re.sub(r'"[^"]*"|\b(by|without)\s*\([^)]*\)', "", rule["expr"])
        expr = re.sub(r"\{[^}]*\}", "", expr)
        names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", expr))
        used |= {name for name in names if name.startswith("airun_") or name in SCRAPE_SERIES}
    assert used - SCRAPE_SERIES, "no airun_ metric found in the rules: the extraction is broken"
    assert used - SCRAPE_SERIES <= exported, f"not exported by the operator: {sorted(used - SCRAPE_SERIES - exported)}"


def test_label_values_in_the_rules_are_ones_the_operator_writes() -> None:
    """phase="..." matchers name real workflow phases; result="..." the values the runner writes."""
    runner = (REPO / "controller" / "operator" / "runner.py").read_text()
    results = set(re.findall(r'result = "(\w+)" if outcome.ok else "(\w+)"', runner)[0])
    assert results == {"succeeded", "failed"}
    for rule in alerts():
        for phase in re.findall(r'phase="([^"]*)"', rule["expr"]):
            assert phase in {p.value for p in WorkflowPhase}, rule["alert"]
        for result in re.findall(r'result="([^"]*)"', rule["expr"]):
            assert result in results, rule["alert"]
