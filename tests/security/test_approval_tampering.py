"""Approvals: every field but the decision and its reason is immutable, removal included, and so is the
metadata the operator relies on (its owner, its labels, its annotations)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from controller.api.workflow import WorkflowPhase
from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_governance import delete, policy, wait_phase
from tests.integration.test_saga import steps_of, wf, write
from tests.kube import Kube


@pytest.fixture
def gated(kube: Kube, namespace: str, operator: DevEnvironment) -> str:
    """An Approval that only carol may decide, for bob's workflow; returns its name."""
    kube.apply(
        policy(
            "deletes-need-carol",
            {"capabilities": ["io.fs.delete*"], "action": "REQUIRE_APPROVAL", "approvers": {"users": ["carol"]}},
        ),
        namespace=namespace,
    )
    time.sleep(0.5)  # the operator's policy index follows the watch
    kube.apply(wf("gated", write("a", "a.txt"), delete("rm", "a.txt", ("a",))), namespace=namespace, as_="bob")
    name: str = steps_of(wait_phase(kube, namespace, "gated", WorkflowPhase.AWAITING_APPROVAL))["rm"]["approval"]
    # The status names the Approval in the checkpoint written just before the operator creates it.
    deadline = time.monotonic() + 30
    while kube.run("get", "approval", name, "-n", namespace, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"approval {name} was never created"
        time.sleep(0.2)
    return name


def _patch(kube: Kube, namespace: str, name: str, patch: dict[str, Any], as_: str) -> tuple[int, str]:
    result = kube.run(
        "patch", "approval", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch), as_=as_, check=False
    )
    return result.returncode, result.stderr


def test_approval_fields_erased_to_approve_without_being_named(kube: Kube, namespace: str, gated: str) -> None:
    """The attack of issue 11: erasing approvers and requestedBy defeated both the approver check and the
    self-approval check."""
    before = kube.get("approval", gated, namespace)
    code, err = _patch(
        kube,
        namespace,
        gated,
        {"spec": {"decision": "Approved", "approvers": None, "requestedBy": None}},
        as_="alice",
    )
    assert code != 0, "alice approved by erasing the approvers"
    assert "immutable" in err or "cannot be changed or removed" in err
    after = kube.get("approval", gated, namespace)
    assert after["spec"] == before["spec"] and not after["spec"].get("decision")


@pytest.mark.parametrize("field", ["approvers", "requestedBy", "inputs", "expiresAt", "capability"])
def test_approval_field_removed_is_refused_by_the_crd_itself(
    kube: Kube, namespace: str, gated: str, field: str
) -> None:
    """CEL on the whole spec: refused by the API server's schema, before any webhook is asked (so also
    while the webhooks are not consulted)."""
    code, err = _patch(kube, namespace, gated, {"spec": {field: None}}, as_="admin")
    assert code != 0 and "(removal included)" in err, err


@pytest.mark.parametrize(
    ("what", "patch"),
    [
        ("metadata.ownerReferences", {"metadata": {"ownerReferences": None}}),
        ("metadata.labels[aifirst.dev/workflow]", {"metadata": {"labels": {"aifirst.dev/workflow": "other"}}}),
        (
            "metadata.annotations[aifirst.dev/notify-url]",
            {"metadata": {"annotations": {"aifirst.dev/notify-url": "https://x"}}},
        ),
    ],
)
def test_approval_metadata_the_operator_relies_on_is_rewritten(
    kube: Kube, namespace: str, gated: str, what: str, patch: dict[str, Any]
) -> None:
    code, err = _patch(kube, namespace, gated, patch, as_="admin")
    assert code != 0 and what in err, err
    # metadata that is not ours stays free
    code, err = _patch(kube, namespace, gated, {"metadata": {"labels": {"team": "a"}}}, as_="admin")
    assert code == 0, err
