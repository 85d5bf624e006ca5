"""`when:` conditions against the real API server and operator: refused at apply when bad, decided on the
inputs as rendered right before the step runs, recorded with what they saw."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_governance import delete, policy
from tests.integration.test_saga import steps_of, wait_terminal, wf, write
from tests.kube import Kube

REPO = Path(__file__).resolve().parents[2]
PROD_DELETES = {
    "principal": "*",
    "capabilities": ["io.fs.delete"],
    "when": 'step.inputs.path.startsWith("prod/")',
    "action": "DENY",
}


@pytest.fixture
def workspace(operator: DevEnvironment, namespace: str) -> Path:
    path = operator.workspaces / namespace
    path.mkdir(parents=True, exist_ok=True)
    return path


def example(name: str) -> dict[str, Any]:
    """A document of policies/examples.yaml, by name."""
    for doc in yaml.safe_load_all((REPO / "policies" / "examples.yaml").read_text()):
        if doc and doc["metadata"]["name"] == name:
            return dict(doc)
    raise AssertionError(f"no example {name} in policies/examples.yaml")


def in_namespace(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    doc = dict(doc)
    doc["metadata"] = {**doc["metadata"], "namespace": namespace}
    return doc


@pytest.mark.parametrize("kind", ["Policy", "ClusterPolicy"])
def test_a_bad_condition_is_refused_at_apply_with_its_position(
    kube: Kube, namespace: str, operator: object, kind: str
) -> None:
    bad = policy(
        "bad-cel", {"capabilities": ["io.fs.delete"], "when": 'step.inputs.path.startsWith("prod/"', "action": "DENY"}
    )
    bad["kind"] = kind
    result = kube.apply(bad, namespace=namespace if kind == "Policy" else None, check=False, dry_run=True)
    assert result.returncode != 0
    assert "spec.rules[0].when: line 1, column 36: Syntax error" in result.stderr, result.stderr
    typo = policy("typo-cel", {"capabilities": ["*"], "when": "stp.name == 'x'", "action": "DENY"})
    result = kube.apply(typo, namespace=namespace, check=False)
    assert result.returncode != 0 and "unknown variable stp" in result.stderr, result.stderr
    wrong_type = policy("type-cel", {"capabilities": ["*"], "when": "principal.user > 3", "action": "DENY"})
    result = kube.apply(wrong_type, namespace=namespace, check=False)
    assert result.returncode != 0 and "No such overload" in result.stderr, result.stderr
    kube.apply(policy("good-cel", PROD_DELETES), namespace=namespace)  # the control: a good one is accepted


def test_deletes_under_prod_are_denied_and_scratch_ones_run(kube: Kube, namespace: str, workspace: Path) -> None:
    kube.apply(in_namespace(example("no-prod-deletes"), namespace))
    time.sleep(0.5)  # the operator's policy index follows the watch
    (workspace / "scratch").mkdir()
    (workspace / "scratch" / "tmp.txt").write_text("junk")
    kube.apply(wf("scratch", delete("rm", "scratch/tmp.txt")), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "scratch")
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert not (workspace / "scratch" / "tmp.txt").exists()

    (workspace / "prod").mkdir()
    (workspace / "prod" / "db").write_text("precious")
    kube.apply(wf("prod", delete("rm", "prod/db")), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "prod")
    assert obj["status"]["reason"] == "PolicyDenied"
    rm = steps_of(obj)["rm"]
    assert rm["decision"] == "DENY" and rm.get("attempts", 0) == 0
    assert rm["condition"] == {
        "rule": f"Policy {namespace}/no-prod-deletes rule 0",
        "when": 'step.inputs.path.startsWith("prod/")',
        "saw": {"step.inputs.path": "prod/db"},
    }
    assert (workspace / "prod" / "db").read_text() == "precious"


def test_a_step_is_decided_on_inputs_rendered_from_earlier_outputs(kube: Kube, namespace: str, workspace: Path) -> None:
    """The path to delete is only known once the first step ran: the decision is made then, on it."""
    kube.apply(policy("no-prod-deletes", PROD_DELETES), namespace=namespace)
    time.sleep(0.5)
    later = {
        "name": "rm",
        "capability": "io.fs.delete",
        "dependsOn": ["a"],
        "inputs": {"path": "{{ steps.a.outputs.path }}"},
    }
    kube.apply(wf("late", write("a", "prod/new.txt"), later), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "late")
    assert obj["status"]["phase"] == "Compensated" and obj["status"]["reason"] == "PolicyDenied"
    rm = steps_of(obj)["rm"]
    assert rm["condition"]["saw"] == {"step.inputs.path": "prod/new.txt"}
    assert steps_of(obj)["a"]["decision"] == "ALLOW"


def test_a_condition_that_fails_on_the_step_denies_it_quoting_the_error(
    kube: Kube, namespace: str, workspace: Path
) -> None:
    kube.apply(
        policy("reads-a-field", {"capabilities": ["io.fs.*"], "when": "step.inputs.mode == 'x'", "action": "ALLOW"}),
        namespace=namespace,
    )
    time.sleep(0.5)
    kube.apply(wf("fails", write("a", "a.txt")), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "fails")
    a = steps_of(obj)["a"]
    assert a["decision"] == "DENY" and "its condition failed: KeyError: mode" in a["policy"], a
    assert a["condition"]["error"] == "KeyError: mode"
    assert not (workspace / "a.txt").exists()


def test_what_a_condition_saw_is_redacted_in_status(kube: Kube, namespace: str, workspace: Path) -> None:
    kube.apply(
        policy(
            "no-inline-tokens",
            {
                "capabilities": ["net.http.*"],
                "when": 'has(step.inputs.headers) && step.inputs.headers.Authorization.startsWith("Bearer ")',
                "action": "DENY",
            },
        ),
        namespace=namespace,
    )
    time.sleep(0.5)
    call = {
        "name": "call",
        "capability": "net.http.request",
        "inputs": {"method": "GET", "url": "https://example.invalid/", "headers": {"Authorization": "Bearer s3cr3t"}},
        "irreversible": True,
    }
    kube.apply(wf("inline", call), namespace=namespace, as_="bob")
    obj = wait_terminal(kube, namespace, "inline")
    step = steps_of(obj)["call"]
    assert step["decision"] == "DENY"
    assert step["condition"]["saw"] == {
        "step.inputs.headers": {"Authorization": "***"},
        "step.inputs.headers.Authorization": "***",
    }
    assert "s3cr3t" not in str(obj["status"])
