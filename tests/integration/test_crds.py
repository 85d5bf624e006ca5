"""The CRDs as the API server serves them: established, printed, explained, and validating."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube import Kube

REPO = Path(__file__).resolve().parents[2]
CRD_NAMES = [
    "workflows.aifirst.dev",
    "policies.aifirst.dev",
    "clusterpolicies.aifirst.dev",
    "approvals.aifirst.dev",
]


def test_crds_are_established(kube: Kube) -> None:
    for name in CRD_NAMES:
        crd = kube.get("crd", name)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", name
        assert conditions.get("NamesAccepted") == "True", name


def test_short_names_and_category(kube: Kube, namespace: str) -> None:
    kube.apply(valid_workflow(), namespace=namespace)
    out = kube.run("get", "wf", "-n", namespace).stdout
    assert out.split("\n")[0].split() == ["NAME", "PHASE", "STEPS", "PRINCIPAL", "AGE"]
    assert "demo" in kube.run("get", "airun", "-n", namespace).stdout


def test_explain_is_useful(kube: Kube) -> None:
    out = kube.run("explain", "workflow.spec.steps.retry.limit").stdout
    assert "Retries after the first attempt" in out
    out = kube.run("explain", "approval.spec.decision").stdout
    assert "Approved or Rejected" in out


def test_examples_are_accepted(kube: Kube, namespace: str) -> None:
    files = sorted((REPO / "examples").glob("*.yaml"))
    assert files, "examples/ has no manifests"
    for path in files:
        result = kube.run("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"


def valid_workflow(name: str = "demo") -> dict[str, Any]:
    return {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {
            "description": "write then gate",
            "params": {"dbName": "prod-db"},
            "timeoutSeconds": 600,
            "steps": [
                {
                    "name": "create_database",
                    "capability": "io.fs.write_file",
                    "inputs": {"path": "db/{{ params.dbName }}.json", "content": "{}"},
                    "retry": {"limit": 3, "backoffSeconds": 1, "factor": 2},
                    "timeoutSeconds": 30,
                    "compensation": {"capability": "io.fs.delete", "inputs": {"path": "x"}},
                },
                {
                    "name": "approval_gate",
                    "type": "Approval",
                    "message": "ok?",
                    "dependsOn": ["create_database"],
                },
            ],
        },
    }


def valid_approval() -> dict[str, Any]:
    return {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": "Approval",
        "metadata": {"name": "demo-approval"},
        "spec": {
            "workflow": "demo",
            "step": "delete_data",
            "capability": "io.fs.delete",
            "riskLevel": "HIGH",
            "inputs": {"path": "x"},
            "inputsHash": "sha256:" + "0" * 64,
            "requestedBy": "bob",
        },
    }


def valid_policy(kind: str = "Policy") -> dict[str, Any]:
    return {
        "apiVersion": "aifirst.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "demo-policy"},
        "spec": {
            "mode": "Enforce",
            "default": "DENY",
            "rules": [
                {
                    "principal": "*",
                    "capabilities": ["io.fs.delete*"],
                    "action": "REQUIRE_APPROVAL",
                    "approvers": {"groups": ["sre"]},
                },
            ],
        },
    }


def _step(wf: dict[str, Any], i: int = 0) -> dict[str, Any]:
    step: dict[str, Any] = wf["spec"]["steps"][i]
    return step


# (id, base manifest factory, mutation, text the error must contain: the field or the rule)
INVALID: list[tuple[str, Any, Any, str]] = [
    ("no-spec", valid_workflow, lambda m: m.pop("spec"), "spec: Required value"),
    ("no-steps", valid_workflow, lambda m: m["spec"].pop("steps"), "spec.steps: Required value"),
    ("empty-steps", valid_workflow, lambda m: m["spec"].update(steps=[]), "spec.steps"),
    # Duplicate step names, unknown dependencies and cycles are refused by the operator's admission webhook
    # (test_governance.py), not by CEL: spec rules would be evaluated again on every status write. So is
    # the shape of each step (WEBHOOK_CASES): a CEL rule per step costs the API server CPU on every checkpoint.
    (
        "self-dependency",
        valid_workflow,
        lambda m: _step(m, 0).update(dependsOn=["create_database"]),
        "step 'create_database' depends on itself",
    ),
    (
        "duplicate-dependency",
        valid_workflow,
        lambda m: _step(m, 1).update(dependsOn=["create_database", "create_database"]),
        "spec.steps[1].dependsOn[1]: Duplicate value",
    ),
    (
        "capability-upper-case",
        valid_workflow,
        lambda m: _step(m).update(capability="IO.FS.write"),
        "spec.steps[0].capability",
    ),
    (
        "capability-no-dot",
        valid_workflow,
        lambda m: _step(m).update(capability="write_file"),
        "spec.steps[0].capability",
    ),
    (
        "action-without-capability",
        valid_workflow,
        lambda m: _step(m).pop("capability"),
        "an Action step needs a capability",
    ),
    (
        "approval-with-capability",
        valid_workflow,
        lambda m: _step(m, 1).update(capability="io.fs.delete"),
        "an Approval step is a human gate and takes no capability",
    ),
    (
        "approval-with-inputs",
        valid_workflow,
        lambda m: _step(m, 1).update(inputs={"a": 1}),
        "an Approval step takes no inputs, retry or compensation",
    ),
    (
        "unknown-step-type",
        valid_workflow,
        lambda m: _step(m).update(type="Manual"),
        'spec.steps[0].type: Unsupported value: "Manual"',
    ),
    (
        "step-name-with-space",
        valid_workflow,
        lambda m: _step(m).update(name="create database"),
        "spec.steps[0].name",
    ),
    ("step-name-too-long", valid_workflow, lambda m: _step(m).update(name="x" * 64), "spec.steps[0].name"),
    (
        "retry-limit-too-high",
        valid_workflow,
        lambda m: _step(m)["retry"].update(limit=11),
        "spec.steps[0].retry.limit",
    ),
    (
        "retry-limit-negative",
        valid_workflow,
        lambda m: _step(m)["retry"].update(limit=-1),
        "spec.steps[0].retry.limit",
    ),
    (
        "backoff-negative",
        valid_workflow,
        lambda m: _step(m)["retry"].update(backoffSeconds=-1),
        "spec.steps[0].retry.backoffSeconds",
    ),
    (
        "factor-below-one",
        valid_workflow,
        lambda m: _step(m)["retry"].update(factor=0.5),
        "spec.steps[0].retry.factor",
    ),
    (
        "step-timeout-zero",
        valid_workflow,
        lambda m: _step(m).update(timeoutSeconds=0),
        "spec.steps[0].timeoutSeconds",
    ),
    (
        "step-timeout-as-text",
        valid_workflow,
        lambda m: _step(m).update(timeoutSeconds="30s"),
        "spec.steps[0].timeoutSeconds",
    ),
    (
        "workflow-timeout-too-long",
        valid_workflow,
        lambda m: m["spec"].update(timeoutSeconds=10**7),
        "spec.timeoutSeconds",
    ),
    ("rollback-not-boolean", valid_workflow, lambda m: m["spec"].update(rollback="yes"), "spec.rollback"),
    (
        "too-many-steps",
        valid_workflow,
        lambda m: m["spec"].update(steps=[{"name": f"s{i}", "capability": "sys.sleep"} for i in range(51)]),
        "spec.steps: Too many",
    ),
    (
        "compensation-without-capability",
        valid_workflow,
        lambda m: _step(m)["compensation"].pop("capability"),
        "spec.steps[0].compensation.capability: Required value",
    ),
    (
        "compensation-bad-capability",
        valid_workflow,
        lambda m: _step(m)["compensation"].update(capability="Delete It"),
        "spec.steps[0].compensation.capability",
    ),
    (
        "typo-in-field-name",
        valid_workflow,
        lambda m: _step(m, 1).update(dependOn=["create_database"]),
        'unknown field "spec.steps[1].dependOn"',
    ),
    (
        "description-too-long",
        valid_workflow,
        lambda m: m["spec"].update(description="x" * 1025),
        "spec.description",
    ),
    (
        "approval-decision-unknown",
        valid_approval,
        lambda m: m["spec"].update(decision="Maybe"),
        'spec.decision: Unsupported value: "Maybe"',
    ),
    (
        "approval-bad-hash",
        valid_approval,
        lambda m: m["spec"].update(inputsHash="md5:abc"),
        "spec.inputsHash",
    ),
    (
        "approval-without-workflow",
        valid_approval,
        lambda m: m["spec"].pop("workflow"),
        "spec.workflow: Required value",
    ),
    ("approval-bad-risk", valid_approval, lambda m: m["spec"].update(riskLevel="EXTREME"), "spec.riskLevel"),
    (
        "policy-unknown-action",
        valid_policy,
        lambda m: m["spec"]["rules"][0].update(action="MAYBE"),
        "spec.rules[0].action: Unsupported value",
    ),
    (
        "policy-unknown-mode",
        valid_policy,
        lambda m: m["spec"].update(mode="Enforcing"),
        "spec.mode: Unsupported value",
    ),
    (
        "policy-rule-without-capabilities",
        valid_policy,
        lambda m: m["spec"]["rules"][0].pop("capabilities"),
        "spec.rules[0].capabilities: Required value",
    ),
    (
        "policy-approvers-on-allow",
        valid_policy,
        lambda m: m["spec"]["rules"][0].update(action="ALLOW"),
        "approvers only make sense on a REQUIRE_APPROVAL rule",
    ),
    (
        "policy-bad-webhook-url",
        valid_policy,
        lambda m: m["spec"]["rules"][0].update(notify={"webhookUrl": "ftp://x"}),
        "spec.rules[0].notify.webhookUrl",
    ),
    (
        "clusterpolicy-unknown-risk",
        lambda: valid_policy("ClusterPolicy"),
        lambda m: m["spec"]["rules"][0].update(riskLevels=["EXTREME"]),
        "spec.rules[0].riskLevels[0]",
    ),
    (
        "clusterpolicy-unknown-default",
        lambda: valid_policy("ClusterPolicy"),
        lambda m: m["spec"].update(default="NO"),
        "spec.default: Unsupported value",
    ),
]


WEBHOOK_CASES = {"self-dependency", "action-without-capability", "approval-with-capability", "approval-with-inputs"}


def test_at_least_25_distinct_invalid_manifests() -> None:
    assert len({case[0] for case in INVALID}) >= 25


@pytest.mark.parametrize(("case", "factory", "mutate", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifest_is_refused(
    request: pytest.FixtureRequest, kube: Kube, namespace: str, case: str, factory: Any, mutate: Any, expected: str
) -> None:
    if case in WEBHOOK_CASES:
        request.getfixturevalue("operator")  # refused by its validating webhook
    manifest = copy.deepcopy(factory())
    # The unmodified manifest is accepted, so the refusal below is due to the mutation alone.
    assert kube.apply(manifest, namespace=namespace, dry_run=True, check=False).returncode == 0
    mutate(manifest)
    result = kube.apply(manifest, namespace=namespace, dry_run=True, check=False)
    assert result.returncode != 0, f"{case} was accepted"
    assert expected in result.stderr, result.stderr


def _start(kube: Kube, namespace: str, name: str, phase: str) -> None:
    """Plays the operator: marks the workflow as started."""
    kube.run(
        "patch",
        "wf",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": phase}}),
    )


def test_spec_is_immutable_once_running_except_rollback(kube: Kube, namespace: str, operator: object) -> None:
    """Enforced by the operator's admission webhook (a CEL rule would cost the API server on every status write)."""
    kube.apply(valid_workflow(), namespace=namespace)
    _start(kube, namespace, "demo", "Running")  # the operator may have started it already: either way
    for patch in (
        '{"spec":{"description":"v3"}}',
        '{"spec":{"params":{"dbName":"other"}}}',
        '{"spec":{"timeoutSeconds":5}}',
    ):
        result = kube.run("patch", "wf", "demo", "-n", namespace, "--type=merge", "-p", patch, check=False)
        assert result.returncode != 0, patch
        assert "spec is immutable once the workflow has started" in result.stderr
    kube.run("patch", "wf", "demo", "-n", namespace, "--type=merge", "-p", '{"spec":{"rollback":true}}')
    assert kube.get("wf", "demo", namespace)["spec"]["rollback"] is True


def test_decided_approval_is_final(kube: Kube, namespace: str) -> None:
    kube.apply(valid_approval(), namespace=namespace)
    kube.run(
        "patch",
        "approval",
        "demo-approval",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"decision":"Rejected"}}',
    )
    result = kube.run(
        "patch",
        "approval",
        "demo-approval",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"decision":"Approved"}}',
        check=False,
    )
    assert result.returncode != 0
    assert "the decision of an Approval is final" in result.stderr
    result = kube.run(
        "patch",
        "approval",
        "demo-approval",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"inputs":{"path":"other"}}}',
        check=False,
    )
    assert "inputs are immutable" in result.stderr


def test_manifests_parse() -> None:
    for path in (REPO / "crds").glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["kind"] == "CustomResourceDefinition"
