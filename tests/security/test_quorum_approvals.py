"""Quorum approvals (`approvers: {groups: [sre], count: 2}`) against the real API server: two distinct
allowed people, never the requester, identities from the API server's authentication only; each decision
kept in status.decisions; the first rejection rejects."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_governance import delete, policy, wait_phase
from tests.integration.test_policy_conditions import example, in_namespace
from tests.integration.test_saga import steps_of, wait_terminal, wf, write
from tests.kube import Kube

# People, as the admin impersonates them (system:masters: RBAC lets them all; only the webhooks decide).
REQUESTER = ("erin", ["sre"])
CAROL = ("carol", ["sre"])
DAVE = ("dave", ["sre"])
MALLORY = ("mallory", ["developers"])  # may patch Approvals (RBAC), is not among the approvers


def as_(person: tuple[str, list[str]]) -> list[str]:
    user, groups = person
    return [f"--as={user}", *(f"--as-group={g}" for g in [*groups, "system:masters"])]


def vote(kube: Kube, namespace: str, approval: str, decision: str, person: tuple[str, list[str]], **extra: str) -> Any:
    body = {"spec": {"decision": decision, **extra}}
    return kube.run(
        "patch",
        "approval",
        approval,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps(body),
        *as_(person),
        check=False,
    )


def start(kube: Kube, namespace: str, name: str, workspace: Path) -> str:
    """A workflow of REQUESTER whose delete needs two people from sre; returns its Approval's name."""
    (workspace / f"{name}.txt").write_text("x")
    manifest = wf(name, write("a", f"{name}-a.txt"), delete("rm", f"{name}.txt", ("a",)))
    kube.run("apply", "-n", namespace, "-f", "-", *as_(REQUESTER), stdin=yaml.safe_dump(manifest))
    obj = wait_phase(kube, namespace, name, "AwaitingApproval")
    return str(steps_of(obj)["rm"]["approval"])


@pytest.fixture
def quorum(kube: Kube, namespace: str, operator: DevEnvironment) -> Path:
    kube.apply(
        policy(
            "two-from-sre",
            {
                "capabilities": ["io.fs.delete"],
                "action": "REQUIRE_APPROVAL",
                "approvers": {"groups": ["sre"], "count": 2},
            },
        ),
        namespace=namespace,
    )
    time.sleep(0.5)
    workspace = operator.workspaces / namespace
    workspace.mkdir(parents=True, exist_ok=True)
    return workspace


def test_two_distinct_approvers_never_the_requester_nor_a_stranger(kube: Kube, namespace: str, quorum: Path) -> None:
    name = start(kube, namespace, "two", quorum)
    approval = kube.get("approval", name, namespace)
    assert approval["spec"]["approvers"] == {"groups": ["sre"], "count": 2}

    refused = vote(kube, namespace, name, "Approved", REQUESTER)
    assert refused.returncode != 0 and "erin requested this approval and cannot decide it" in refused.stderr
    refused = vote(kube, namespace, name, "Approved", MALLORY)
    assert refused.returncode != 0 and "mallory is not among the approvers" in refused.stderr

    assert vote(kube, namespace, name, "Approved", CAROL, reason="checked the path").returncode == 0
    pending = kube.wait_for(
        "approval", name, namespace, lambda o: len((o.get("status") or {}).get("decisions") or []) == 1, what="1 vote"
    )
    assert pending["spec"]["decision"] == "" and pending["status"]["phase"] == "Pending"
    (decision,) = pending["status"]["decisions"]
    assert (
        decision["user"] == "carol" and decision["decision"] == "Approved" and decision["reason"] == "checked the path"
    )
    assert "at" in decision
    assert (quorum / "two.txt").exists(), "one approval of two ran the step"
    obj = kube.get("wf", "two", namespace)
    assert obj["status"]["phase"] == "AwaitingApproval"

    again = vote(kube, namespace, name, "Approved", CAROL)
    assert again.returncode != 0 and "carol has decided already" in again.stderr
    # Forged votes: under another name, or written straight into spec.votes.
    forged = [*pending["spec"]["votes"], {"user": "dave", "decision": "Approved"}]
    result = kube.run(
        "patch", "approval", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {"votes": forged}}),
        *as_(MALLORY), check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "not 'dave'" in result.stderr
    removed = kube.run(
        "patch", "approval", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {"votes": []}}),
        *as_(DAVE), check=False,
    )  # fmt: skip
    assert removed.returncode != 0 and "only grow" in removed.stderr

    assert vote(kube, namespace, name, "Approved", DAVE).returncode == 0
    obj = wait_terminal(kube, namespace, "two")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert not (quorum / "two.txt").exists()
    decided = kube.get("approval", name, namespace)
    assert decided["spec"]["decision"] == "Approved" and decided["status"]["phase"] == "Approved"
    assert decided["status"]["decidedBy"] == "carol, dave"
    assert [d["user"] for d in decided["status"]["decisions"]] == ["carol", "dave"]
    late = vote(kube, namespace, name, "Rejected", MALLORY)
    assert late.returncode != 0


def test_a_rejection_after_one_approval_rejects(kube: Kube, namespace: str, quorum: Path) -> None:
    name = start(kube, namespace, "one-then-no", quorum)
    assert vote(kube, namespace, name, "Approved", CAROL).returncode == 0
    assert vote(kube, namespace, name, "Rejected", DAVE, reason="not today").returncode == 0
    obj = wait_terminal(kube, namespace, "one-then-no")
    assert obj["status"]["reason"] == "ApprovalRejected", obj["status"]
    assert "rejected by dave" in steps_of(obj)["rm"]["error"]
    assert (quorum / "one-then-no.txt").exists()
    decided = kube.get("approval", name, namespace)
    assert decided["status"]["phase"] == "Rejected"
    assert [(d["user"], d["decision"]) for d in decided["status"]["decisions"]] == [
        ("carol", "Approved"),
        ("dave", "Rejected"),
    ]


def test_the_rolebinding_example_asks_two_people(kube: Kube, namespace: str, operator: DevEnvironment) -> None:
    """policies/examples.yaml: applying a RoleBinding needs two people from sre, by its condition."""
    kube.apply(in_namespace(example("bindings-need-two"), namespace))
    kube.apply(policy("allow-k8s", {"capabilities": ["k8s.*"], "action": "ALLOW"}), namespace=namespace)
    time.sleep(0.5)
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "agent-admin", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "name": "agent", "apiGroup": "rbac.authorization.k8s.io"}],
    }
    step = {"name": "grant", "capability": "k8s.apply", "inputs": {"manifest": binding}}
    kube.run("apply", "-n", namespace, "-f", "-", *as_(REQUESTER), stdin=yaml.safe_dump(wf("grant", step)))
    obj = wait_phase(kube, namespace, "grant", "AwaitingApproval")
    grant = steps_of(obj)["grant"]
    assert grant["condition"]["rule"] == f"Policy {namespace}/bindings-need-two rule 0"
    assert grant["condition"]["saw"] == {"step.inputs.manifest.kind": "RoleBinding"}
    approval = kube.get("approval", grant["approval"], namespace)
    assert approval["spec"]["approvers"] == {"groups": ["sre"], "count": 2}
