"""Principals: the operator runs a workflow only under a principal its own admission webhook attested,
and groups are a list that no group name can split."""

from __future__ import annotations

import json
import time

import yaml

from controller.api.workflow import Reason, WorkflowPhase
from controller.localcluster.devenv import DevEnvironment
from tests.integration.test_governance import policy
from tests.integration.test_saga import wait_terminal, wf, write
from tests.kube import Kube
from tests.security.test_webhooks_down import wait_gauge, webhooks_deleted


def test_forged_principal_annotations_while_the_webhooks_are_deleted_never_run(
    kube: Kube, namespace: str, operator: DevEnvironment
) -> None:
    # A genuine attestation, to be copied onto another workflow: it must not vouch for that one.
    kube.apply(wf("genuine", write("a", "genuine.txt")), namespace="agents", as_="agent")
    genuine = wait_terminal(kube, "agents", "genuine")["metadata"]["annotations"]
    kube.run("delete", "wf", "genuine", "-n", "agents")
    forged = {
        "made-up": {
            "aifirst.dev/principal": "alice",
            "aifirst.dev/principal-groups": json.dumps(["approvers", "system:masters"]),
            "aifirst.dev/principal-attestation": "v1.1764547200." + "0" * 64,
        },
        "copied": {k: v for k, v in genuine.items() if k.startswith("aifirst.dev/principal")},
    }
    with webhooks_deleted(kube):
        wait_gauge(operator, 0)
        for name, annotations in forged.items():
            manifest = wf(name, write("a", f"{name}.txt"))
            manifest["metadata"]["annotations"] = annotations
            kube.apply(manifest, namespace=namespace, as_="bob")
    for name in forged:
        obj = wait_terminal(kube, namespace, name)
        assert obj["status"]["phase"] == WorkflowPhase.FAILED and obj["status"]["reason"] == Reason.UNATTESTED, name
        assert "create it again" in obj["status"]["message"]
        assert obj["status"].get("principal") in (None, ""), f"{name} ran as {obj['status'].get('principal')}"
        assert not (operator.workspaces / namespace / f"{name}.txt").exists()


def test_group_with_a_comma_cannot_become_system_masters(kube: Kube, namespace: str, operator: DevEnvironment) -> None:
    kube.apply(
        policy(
            "masters-only",
            {"principal": "group:system:masters", "capabilities": ["*"], "action": "ALLOW"},
            default="DENY",
        ),
        namespace=namespace,
    )
    time.sleep(0.5)  # the operator's policy index follows the watch
    # bob, as the API server authenticates him through the admin's impersonation, in one group whose
    # name holds a comma
    kube.run(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        "--as=bob",
        "--as-group=x,system:masters",
        stdin=yaml.safe_dump(wf("comma", write("a", "comma.txt"))),
    )
    obj = wait_terminal(kube, namespace, "comma")
    groups = json.loads(obj["metadata"]["annotations"]["aifirst.dev/principal-groups"])
    assert "x,system:masters" in groups and "system:masters" not in groups
    assert obj["status"]["reason"] == Reason.POLICY_DENIED, "the comma made bob a member of system:masters"
    assert not (operator.workspaces / namespace / "comma.txt").exists()
