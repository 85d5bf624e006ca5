"""Without its admission webhooks the operator starts nothing new (and says so); with the operator down,
metadata-only updates still pass while everything the webhooks guard stays refused (fail closed)."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from controller.api.workflow import WorkflowPhase
from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_saga import steps_of, wait_terminal, wf, write
from tests.kube import Kube

CONFIGURATION = "airun.aifirst.dev"
KINDS = ("mutatingwebhookconfiguration", "validatingwebhookconfiguration")


@contextlib.contextmanager
def webhooks_deleted(kube: Kube, kinds: tuple[str, ...] = KINDS) -> Iterator[None]:
    """An admin deletes the webhook configurations; they are put back as they were afterwards."""
    saved: list[dict[str, Any]] = []
    for kind in kinds:
        body = kube.get(kind, CONFIGURATION)
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
            body["metadata"].pop(key, None)
        saved.append(body)
        kube.run("delete", kind, CONFIGURATION)
    try:
        yield
    finally:
        for body in saved:
            kube.run("create", "-f", "-", stdin=json.dumps(body))


def registered_gauge(env: DevEnvironment) -> float:
    with urllib.request.urlopen(env.endpoints()["metrics"], timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("airun_webhooks_registered "):
                return float(line.split()[1])
    raise AssertionError("airun_webhooks_registered is not exported")


def wait_gauge(env: DevEnvironment, value: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while registered_gauge(env) != value:
        assert time.monotonic() < deadline, f"airun_webhooks_registered never read {value}"
        time.sleep(0.5)


def test_webhooks_missing_new_workflows_wait_with_a_condition_and_the_metric_reads_zero(
    kube: Kube, namespace: str, operator: DevEnvironment
) -> None:
    # The validating configuration only: the mutating one still attests the creator, so once the
    # webhooks are back the workflow must run.
    with webhooks_deleted(kube, ("validatingwebhookconfiguration",)):
        wait_gauge(operator, 0)
        kube.apply(wf("waits", write("a", "a.txt")), namespace=namespace, as_="bob")
        obj = kube.wait_for(
            "wf",
            "waits",
            namespace,
            lambda o: any(c.get("reason") == "WebhooksMissing" for c in o.get("status", {}).get("conditions") or []),
            what="condition WebhooksMissing",
        )
        condition = next(c for c in obj["status"]["conditions"] if c["type"] == "Admitted")
        assert condition["status"] == "False" and "webhook" in condition["message"]
        time.sleep(2)
        obj = kube.get("wf", "waits", namespace)
        assert obj["status"]["phase"] == WorkflowPhase.PENDING and not obj["status"].get("steps"), (
            "it ran without webhooks"
        )
    wait_gauge(operator, 1)
    obj = wait_terminal(kube, namespace, "waits")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED and obj["status"]["principal"] == "bob"
    assert not [c for c in obj["status"]["conditions"] if c["type"] == "Admitted"]


def test_metadata_only_updates_refused_while_the_operator_is_down(
    kube: Kube, namespace: str, operator: DevEnvironment
) -> None:
    manifest = wf("held", write("a", "a.txt"), {"name": "gate", "type": "Approval", "dependsOn": ["a"]})
    manifest["metadata"]["finalizers"] = ["example.com/cleanup"]
    kube.apply(manifest, namespace=namespace, as_="bob")
    obj = kube.wait_for(
        "wf",
        "held",
        namespace,
        lambda o: o.get("status", {}).get("phase") == WorkflowPhase.AWAITING_APPROVAL,
        what="waiting",
    )
    approval = steps_of(obj)["gate"]["approval"]
    operator.stop_operator()
    try:

        def patch(kind: str, name: str, body: dict[str, Any]) -> tuple[int, str]:
            result = kube.run("patch", kind, name, "-n", namespace, "--type=merge", "-p", json.dumps(body), check=False)
            return result.returncode, result.stderr

        # what an admin cleaning up needs: foreign finalizers, labels, annotations
        assert patch("wf", "held", {"metadata": {"labels": {"cleanup": "yes"}}}) == (0, "")
        assert patch("wf", "held", {"metadata": {"annotations": {"example.com/note": "x"}}}) == (0, "")
        assert patch("wf", "held", {"metadata": {"finalizers": ["aifirst.dev/saga"]}}) == (0, "")
        assert patch("approval", approval, {"metadata": {"labels": {"cleanup": "yes"}}}) == (0, "")
        # what the webhooks guard is still refused: fail closed
        code, err = patch("wf", "held", {"spec": {"description": "changed"}})
        assert code != 0 and "failed calling webhook" in err, err
        code, err = patch("wf", "held", {"metadata": {"finalizers": None}})
        assert code != 0 and "failed calling webhook" in err, err  # the saga finalizer guarantees compensation
        code, err = patch("wf", "held", {"metadata": {"annotations": {"aifirst.dev/principal": "alice"}}})
        assert code != 0 and "failed calling webhook" in err, err
        code, err = patch("approval", approval, {"spec": {"decision": "Approved"}})
        assert code != 0 and "failed calling webhook" in err, err
    finally:
        operator.start_operator()
    obj = kube.get("wf", "held", namespace)
    assert obj["metadata"]["finalizers"] == ["aifirst.dev/saga"] and obj["metadata"]["labels"]["cleanup"] == "yes"


def test_the_saga_finalizer_of_a_finished_workflow_comes_off_without_the_webhooks(
    kube: Kube, namespace: str, operator: DevEnvironment
) -> None:
    """Anyone may remove it once the workflow has finished, so that removal (the operator's last write of
    every workflow) is not sent to the UPDATE webhooks at all (matchConditions)."""
    kube.apply(wf("done", write("a", "a.txt")), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "done")
    assert obj["status"]["phase"] == WorkflowPhase.SUCCEEDED
    kube.wait_for("wf", "done", namespace, lambda o: not o["metadata"].get("finalizers"), what="finalizer removed")
    operator.stop_operator()
    try:

        def patch(body: dict[str, Any]) -> tuple[int, str]:
            result = kube.run(
                "patch", "wf", "done", "-n", namespace, "--type=merge", "-p", json.dumps(body), check=False
            )
            return result.returncode, result.stderr

        assert patch({"metadata": {"finalizers": ["aifirst.dev/saga"]}}) == (0, "")  # as if the operator died first
        assert patch({"metadata": {"finalizers": None}}) == (0, "")  # finished: no webhook is asked
        code, err = patch({"spec": {"rollback": True}})  # what the webhooks guard is still refused
        assert code != 0 and "failed calling webhook" in err, err
    finally:
        operator.start_operator()
