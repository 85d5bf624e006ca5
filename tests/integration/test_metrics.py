"""The metrics endpoint shows what happened (scraped like Prometheus would)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from controller.api.metadata import FINISHED_LABEL
from controller.api.workflow import StepPhase, WorkflowPhase
from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_saga import wait_terminal, wf, write
from tests.kube import Kube


def scrape(env: DevEnvironment) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(env.endpoints()["metrics"], timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == w for k, w in labels.items())
    )


def test_metrics_follow_workflows(kube: Kube, namespace: str, operator: DevEnvironment) -> None:
    before = scrape(operator)
    kube.apply(wf("m-ok", write("a", "a.txt")), namespace=namespace, as_="bob")
    kube.apply(
        wf(
            "m-comp",
            write("a", "b.txt"),
            {
                "name": "boom",
                "capability": "test.fail",
                "dependsOn": ["a"],
                "retry": {"limit": 1, "backoffSeconds": 0.1},
            },
        ),
        namespace=namespace,
        as_="bob",
    )
    kube.apply(wf("m-wait", {"name": "gate", "type": "Approval"}), namespace=namespace, as_="bob")
    wait_terminal(kube, namespace, "m-ok")
    wait_terminal(kube, namespace, "m-comp")
    for name in ("m-ok", "m-comp"):  # the operator's last write of each: it leaves the watch
        kube.wait_for("wf", name, namespace, lambda o: FINISHED_LABEL in (o["metadata"].get("labels") or {}))
    kube.wait_for(
        "wf", "m-wait", namespace, lambda o: o.get("status", {}).get("phase") == WorkflowPhase.AWAITING_APPROVAL
    )
    after = scrape(operator)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Finished workflows leave the operator's watch (aifirst.dev/finished) and its gauge: the duration
    # histogram counts them.
    assert value(after, "airun_workflows", namespace=namespace, phase="Succeeded") == 0
    assert value(after, "airun_workflows", namespace=namespace, phase="Compensated") == 0
    assert value(after, "airun_workflows", namespace=namespace, phase="AwaitingApproval") == 1
    assert value(after, "airun_approvals_pending", namespace=namespace) == 1
    assert 0 < value(after, "airun_approval_oldest_pending_seconds", namespace=namespace) < 120
    assert delta("airun_steps_total", capability="test.fail") == 2
    assert delta("airun_step_retries_total", capability="test.fail") == 1
    assert delta("airun_compensations_total", capability="io.fs.restore", result="succeeded") == 1
    assert delta("airun_policy_decisions_total", decision="ALLOW") >= 3
    assert delta("airun_workflow_duration_seconds_count", phase="Compensated") == 1
    assert delta("airun_step_duration_seconds_count", capability="io.fs.write_file", result="succeeded") == 2
    # a delta: the operator is shared by the session, and earlier tests may have retried their own writes
    assert delta("airun_reconcile_errors_total") == 0
    # every decision has a series before it first happens; pending approvals go back to 0, not to nothing
    assert ("airun_policy_decisions_total", (("decision", "DENY"),)) in before
    patch = '{"spec":{"decision":"Approved"}}'
    kube.run("patch", "approval", "m-wait.gate", "-n", namespace, "--type", "merge", "-p", patch, as_="alice")
    wait_terminal(kube, namespace, "m-wait")
    decided = scrape(operator)
    assert decided[("airun_approvals_pending", (("namespace", namespace),))] == 0
    assert decided[("airun_approval_oldest_pending_seconds", (("namespace", namespace),))] == 0
    assert value(decided, "airun_approval_wait_seconds_count", result="Approved") >= 1


def test_side_effect_free_steps_ride_along_with_the_next_checkpoint(
    kube: Kube, namespace: str, operator: DevEnvironment
) -> None:
    chain = [
        {"name": f"p{i}", "capability": "sys.sleep", "inputs": {"seconds": 0}, "dependsOn": [f"p{i - 1}"] if i else []}
        for i in range(10)
    ]
    chain.append(write("w", "after-pure.txt", ("p9",)))
    before = scrape(operator)
    kube.apply(wf("pure-chain", *chain), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "pure-chain")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED
    writes = value(scrape(operator), "airun_status_writes_total") - value(before, "airun_status_writes_total")
    # Start, the checkpoint before the side-effecting step (carrying the ten pure steps), its result; maybe one
    # time-based flush. Eleven steps, far fewer than eleven writes.
    assert 3 <= writes <= 5, writes
    assert all(s["phase"] == StepPhase.SUCCEEDED for s in obj["status"]["steps"])
