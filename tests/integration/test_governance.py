"""Policies, approvals and identities under the four local identities (admin, alice, bob, agent)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from controller.api.workflow import WorkflowPhase
from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_saga import steps_of, wait_terminal, wf, write
from tests.kube import Kube


@pytest.fixture
def workspace(operator: DevEnvironment, namespace: str) -> Path:
    return operator.workspaces / namespace


def policy(name: str, *rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"default": "ALLOW", "rules": list(rules), **spec},
    }


def delete(name: str, path: str, deps: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"name": name, "capability": "io.fs.delete", "dependsOn": list(deps), "inputs": {"path": path}}


def wait_phase(kube: Kube, namespace: str, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
    return kube.wait_for(
        "wf", name, namespace, lambda o: o.get("status", {}).get("phase") == phase, timeout=timeout, what=phase
    )


def decide(kube: Kube, namespace: str, approval: str, decision: str, as_: str) -> tuple[int, str]:
    result = kube.run(
        "patch",
        "approval",
        approval,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"decision": decision}}),
        as_=as_,
        check=False,
    )
    return result.returncode, result.stderr


def test_principal_comes_from_authentication_not_the_body(kube: Kube, operator: object) -> None:
    manifest = wf("claims-alice", write("a", "claims.txt"))
    manifest["metadata"]["annotations"] = {"aifirst.dev/principal": "alice", "aifirst.dev/principal-groups": "sre"}
    kube.apply(manifest, namespace="agents", as_="agent")
    obj = wait_terminal(kube, "agents", "claims-alice")
    assert obj["status"]["principal"] == "system:serviceaccount:agents:planner"
    annotations = obj["metadata"]["annotations"]
    assert annotations["aifirst.dev/principal"] == "system:serviceaccount:agents:planner"
    assert "system:serviceaccounts:agents" in json.loads(annotations["aifirst.dev/principal-groups"])
    result = kube.run(
        "annotate",
        "wf",
        "claims-alice",
        "-n",
        "agents",
        "--overwrite",
        "aifirst.dev/principal=alice",
        as_="agent",
        check=False,
    )
    assert result.returncode != 0 and "cannot be changed" in result.stderr


def test_deny_never_runs_the_step_and_compensates_earlier_ones(kube: Kube, namespace: str, workspace: Path) -> None:
    kube.apply(policy("no-deletes", {"capabilities": ["io.fs.delete"], "action": "DENY"}), namespace=namespace)
    time.sleep(0.5)  # the operator's policy index follows the watch
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "keep.txt").write_text("precious")
    kube.apply(wf("denied", write("a", "a.txt"), delete("rm", "keep.txt", ("a",))), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "denied")
    assert obj["status"]["phase"] == "Compensated" and obj["status"]["reason"] == "PolicyDenied"
    rm = steps_of(obj)["rm"]
    assert rm["decision"] == "DENY" and rm["phase"] == "Failed" and rm.get("attempts", 0) == 0
    assert "Policy " + namespace + "/no-deletes rule 0: DENY" in rm["policy"]
    assert (workspace / "keep.txt").read_text() == "precious"
    assert not (workspace / "a.txt").exists()


def test_require_approval_is_decided_by_a_named_approver_only(kube: Kube, namespace: str, workspace: Path) -> None:
    kube.apply(
        policy(
            "deletes-need-approvers",
            {"capabilities": ["io.fs.delete*"], "action": "REQUIRE_APPROVAL", "approvers": {"groups": ["approvers"]}},
        ),
        namespace=namespace,
    )
    time.sleep(0.5)
    kube.apply(wf("gated", write("a", "a.txt"), delete("rm", "a.txt", ("a",))), namespace=namespace, as_="bob")
    obj = wait_phase(kube, namespace, "gated", "AwaitingApproval")
    name = steps_of(obj)["rm"]["approval"]
    approval = kube.get("approval", name, namespace)
    spec = approval["spec"]
    assert spec["capability"] == "io.fs.delete" and spec["riskLevel"] == "MEDIUM"
    assert spec["inputs"] == {"path": "a.txt"} and spec["inputsHash"].startswith("sha256:")
    assert spec["requestedBy"] == "bob" and spec["approvers"] == {"groups": ["approvers"]}
    assert approval["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert (workspace / "a.txt").exists()

    code, err = decide(kube, namespace, name, "Approved", "bob")
    assert code != 0 and 'User "bob" cannot patch resource "approvals"' in err
    code, err = decide(kube, namespace, name, "Approved", "agent")
    assert code != 0 and "forbidden" in err
    code, err = decide(kube, namespace, name, "Approved", "admin")  # RBAC allows, the policy does not
    assert code != 0 and "admin is not among the approvers the policy names (groups approvers)" in err
    code, err = decide(kube, namespace, name, "Approved", "alice")
    assert code == 0, err
    obj = wait_terminal(kube, namespace, "gated")
    assert obj["status"]["phase"] == "Succeeded"
    assert not (workspace / "a.txt").exists()
    decided = kube.get("approval", name, namespace)
    assert decided["status"]["phase"] == "Approved" and decided["status"]["decidedBy"] == "alice"
    story = kube.events_of(name, namespace, field="message", contains="approved by alice")
    assert "requested by bob" in story and "io.fs.delete (MEDIUM risk): approved by alice" in story
    code, err = decide(kube, namespace, name, "Rejected", "alice")
    assert code != 0 and "final" in err


def test_nobody_approves_their_own_request(kube: Kube, namespace: str, operator: object) -> None:
    kube.apply(wf("own", {"name": "gate", "type": "Approval"}), namespace=namespace, as_="admin")
    obj = wait_phase(kube, namespace, "own", "AwaitingApproval")
    name = steps_of(obj)["gate"]["approval"]
    code, err = decide(kube, namespace, name, "Approved", "admin")
    assert code != 0 and "admin requested this approval and cannot decide it" in err
    forged = kube.run(
        "annotate", "approval", name, "-n", namespace, "aifirst.dev/decided-by=alice", as_="admin", check=False
    )
    assert forged.returncode != 0 and "cannot be changed" in forged.stderr


def test_rejection_compensates(kube: Kube, namespace: str, workspace: Path) -> None:
    kube.apply(
        wf("rejected", write("a", "a.txt"), {"name": "gate", "type": "Approval", "dependsOn": ["a"]}),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_phase(kube, namespace, "rejected", "AwaitingApproval")
    assert (workspace / "a.txt").exists()
    code, err = decide(kube, namespace, steps_of(obj)["gate"]["approval"], "Rejected", "alice")
    assert code == 0, err
    obj = wait_terminal(kube, namespace, "rejected")
    assert obj["status"]["phase"] == "Compensated" and obj["status"]["reason"] == "ApprovalRejected"
    assert "rejected by alice" in steps_of(obj)["gate"]["error"]
    assert not (workspace / "a.txt").exists()


def test_expiry_compensates(kube: Kube, namespace: str, workspace: Path) -> None:
    kube.apply(
        wf(
            "expired",
            write("a", "a.txt"),
            {"name": "gate", "type": "Approval", "dependsOn": ["a"], "approvalTimeoutSeconds": 2},
        ),
        namespace=namespace,
        as_="bob",
    )
    obj = wait_terminal(kube, namespace, "expired", timeout=30)
    assert obj["status"]["phase"] == "Compensated" and obj["status"]["reason"] == "ApprovalExpired"
    approval = kube.get("approval", steps_of(obj)["gate"]["approval"], namespace)
    assert approval["status"]["phase"] == "Expired"
    assert not (workspace / "a.txt").exists()


def test_audit_mode_runs_the_step_and_records_the_would_be_decision(
    kube: Kube, namespace: str, workspace: Path
) -> None:
    kube.apply(
        policy("audit-writes", {"capabilities": ["io.fs.write_file"], "action": "DENY"}, mode="Audit"),
        namespace=namespace,
    )
    time.sleep(0.5)
    kube.apply(wf("audited", write("a", "a.txt")), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "audited")
    assert obj["status"]["phase"] == "Succeeded"
    a = steps_of(obj)["a"]
    assert a["decision"] == "ALLOW"
    assert a["audit"] == [f"Policy {namespace}/audit-writes rule 0: DENY"]
    assert (workspace / "a.txt").exists()


def test_parallel_gated_branches_are_approved_independently(kube: Kube, namespace: str, workspace: Path) -> None:
    kube.apply(policy("ask", {"capabilities": ["io.fs.delete"], "action": "REQUIRE_APPROVAL"}), namespace=namespace)
    time.sleep(0.5)
    kube.apply(
        wf(
            "branches",
            write("left", "l.txt"),
            write("right", "r.txt"),
            delete("rm-left", "l.txt", ("left",)),
            delete("rm-right", "r.txt", ("right",)),
        ),
        namespace=namespace,
        as_="bob",
    )
    obj = kube.wait_for(
        "wf",
        "branches",
        namespace,
        lambda o: sum(1 for s in o.get("status", {}).get("steps", []) if s.get("approval")) == 2,
        what="two approvals",
    )
    left, right = steps_of(obj)["rm-left"]["approval"], steps_of(obj)["rm-right"]["approval"]
    assert left != right
    assert decide(kube, namespace, left, "Approved", "alice")[0] == 0
    kube.wait_for(
        "wf", "branches", namespace, lambda o: steps_of(o)["rm-left"]["phase"] == "Succeeded", what="left deleted"
    )
    obj = kube.get("wf", "branches", namespace)
    assert steps_of(obj)["rm-right"]["phase"] == "AwaitingApproval" and obj["status"]["phase"] == "AwaitingApproval"
    assert not (workspace / "l.txt").exists() and (workspace / "r.txt").exists()
    assert decide(kube, namespace, right, "Approved", "alice")[0] == 0
    assert wait_terminal(kube, namespace, "branches")["status"]["phase"] == "Succeeded"


def test_unknown_capability_and_cycles_are_refused_at_apply_time(kube: Kube, namespace: str, operator: object) -> None:
    result = kube.apply(
        wf(
            "bad",
            {"name": "a", "capability": "io.fs.teleport", "dependsOn": ["b"]},
            {"name": "b", "capability": "sys.sleep", "inputs": {"seconds": 0}, "dependsOn": ["a"]},
        ),
        namespace=namespace,
        as_="bob",
        check=False,
    )
    assert result.returncode != 0
    assert "dependency cycle: " in result.stderr and "unknown capability 'io.fs.teleport'" in result.stderr

    sleep = {"capability": "sys.sleep", "inputs": {"seconds": 0}}
    twice = kube.apply(
        wf("twice", {"name": "a", **sleep}, {"name": "a", **sleep}), namespace=namespace, as_="bob", check=False
    )
    assert twice.returncode != 0 and "step name 'a' is used more than once" in twice.stderr
    dangling = kube.apply(
        wf("dangling", {"name": "a", **sleep, "dependsOn": ["nope"]}), namespace=namespace, as_="bob", check=False
    )
    assert dangling.returncode != 0 and "depends on 'nope', which is not a step" in dangling.stderr


def test_a_template_reading_a_step_it_does_not_depend_on_is_refused_at_apply_time(
    kube: Kube, namespace: str, operator: object
) -> None:
    write = {"capability": "io.fs.write_file", "inputs": {"path": "a.txt", "content": "a"}}
    copy = {
        "name": "copy",
        "capability": "io.fs.write_file",
        "inputs": {"path": "{{ steps.a.outputs.path }}.copy", "content": "x"},
    }
    racy = wf("racy", {"name": "a", **write}, {"name": "b", **write}, {**copy, "dependsOn": ["b"]})
    refused = kube.apply(racy, namespace=namespace, as_="bob", check=False)
    assert refused.returncode != 0
    assert (
        "step 'copy' reads steps.a but does not depend on a, which may not have run yet: add dependsOn: [b, a]"
        in refused.stderr
    ), refused.stderr
    assert kube.run("get", "wf", "racy", "-n", namespace, check=False).returncode != 0  # nothing was created
    through_b = wf(
        "through-b", {"name": "a", **write}, {"name": "b", **write, "dependsOn": ["a"]}, {**copy, "dependsOn": ["b"]}
    )
    kube.apply(through_b, namespace=namespace, as_="bob")  # a transitive dependency is enough
    assert wait_terminal(kube, namespace, "through-b")["status"]["phase"] == WorkflowPhase.SUCCEEDED


def test_an_old_approval_never_decides_for_a_new_workflow_of_the_same_name(
    kube: Kube, namespace: str, operator: object
) -> None:
    gated = wf("reused", {"name": "gate", "type": "Approval"})
    kube.apply(gated, namespace=namespace, as_="bob")
    obj = wait_phase(kube, namespace, "reused", "AwaitingApproval")
    name = steps_of(obj)["gate"]["approval"]
    assert decide(kube, namespace, name, "Approved", "alice")[0] == 0
    wait_terminal(kube, namespace, "reused")
    kube.run("delete", "wf", "reused", "-n", namespace)
    # Garbage collection is asynchronous: the approved Approval may still be there (the operator then
    # replaces it, an orphan) or already collected. Either way the new workflow gets a fresh one.
    kube.apply(gated, namespace=namespace, as_="bob")
    obj = wait_phase(kube, namespace, "reused", "AwaitingApproval")
    fresh = kube.get("approval", name, namespace)
    assert fresh["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert fresh["spec"]["decision"] == "" and fresh["status"]["phase"] == "Pending"


def test_a_deleted_workflows_approval_is_collected_and_its_namespace_finishes_deleting(
    kube: Kube, operator: object
) -> None:
    """The controller-manager's garbage collector and namespace controller, as on any cluster."""
    namespace = kube.create_namespace(f"gc-{uuid.uuid4().hex[:8]}")
    kube.apply(wf("waits", {"name": "gate", "type": "Approval"}), namespace=namespace, as_="bob")
    name = steps_of(wait_phase(kube, namespace, "waits", "AwaitingApproval"))["gate"]["approval"]
    kube.run("delete", "wf", "waits", "-n", namespace, "--wait=true", "--timeout=60s", as_="bob")
    deadline = time.monotonic() + 60
    while kube.run("get", "approval", name, "-n", namespace, check=False).returncode == 0:
        assert time.monotonic() < deadline, f"approval {name} of the deleted workflow was never collected"
        time.sleep(0.3)
    nap = {"name": "nap", "capability": "sys.sleep", "inputs": {"seconds": 0}}
    kube.apply(wf("done", nap), namespace=namespace, as_="bob")
    wait_terminal(kube, namespace, "done")
    kube.run("delete", "namespace", namespace, "--wait=true", "--timeout=90s")
    assert kube.run("get", "namespace", namespace, check=False).returncode != 0
