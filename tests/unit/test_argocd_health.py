"""The Argo CD health checks of Workflow and Approval (charts/airun/argocd), run by gopher-lua (the interpreter Argo CD
embeds) on the test cases next to them, in Argo CD's own layout: health_test.yaml lists testdata objects and the
expected status and message."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.localcluster.binaries import find_binaries
from tests.argocd_health import CUSTOMIZATIONS, Health, assess, health_script

KINDS = ("Workflow", "Approval")
ARGOCD = CUSTOMIZATIONS.parent  # charts/airun/argocd: the checks ship with the chart
REPO = Path(__file__).resolve().parents[2]


def _cases() -> list[Any]:
    cases = []
    for kind in KINDS:
        folder = CUSTOMIZATIONS / "aifirst.dev" / kind
        for case in yaml.safe_load((folder / "health_test.yaml").read_text())["tests"]:
            expected = Health(case["healthStatus"]["status"], case["healthStatus"]["message"])
            cases.append(pytest.param(kind, folder / case["inputPath"], expected, id=f"{kind}-{case['inputPath']}"))
    return cases


@pytest.mark.parametrize(("kind", "path", "expected"), _cases())
def test_health_of_testdata(kind: str, path: Path, expected: Health) -> None:
    obj = yaml.safe_load(path.read_text())
    assert obj["kind"] == kind
    assert assess(health_script("aifirst.dev", kind), obj) == expected


def test_every_phase_of_the_crds_has_a_case() -> None:
    """A phase added to a CRD without a health case (and so perhaps without a branch in health.lua) fails here."""
    for kind, crd in (("Workflow", "workflow.yaml"), ("Approval", "approval.yaml")):
        schema = yaml.safe_load((REPO / "crds" / crd).read_text())["spec"]["versions"][0]["schema"]
        phases = set(schema["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]["enum"])
        folder = CUSTOMIZATIONS / "aifirst.dev" / kind
        covered = set()
        for case in yaml.safe_load((folder / "health_test.yaml").read_text())["tests"]:
            covered.add((yaml.safe_load((folder / case["inputPath"]).read_text()).get("status") or {}).get("phase"))
        assert phases <= covered, f"{kind}: no test case for {sorted(phases - covered)}"


def test_messages_pass_through_byte_for_byte() -> None:
    """Quotes, backslashes, newlines and non-ASCII text in status reach the message unchanged."""
    obj = yaml.safe_load((CUSTOMIZATIONS / "aifirst.dev/Workflow/testdata/failed.yaml").read_text())
    obj["status"]["message"] = 'step "a\\b" failed:\n\tÉchec — 失败 ]] ]==]'
    health = assess(health_script("aifirst.dev", "Workflow"), obj)
    assert health == Health("Degraded", f"Failed (PolicyDenied): {obj['status']['message']}")


def test_unknown_phases_are_unknown() -> None:
    for kind in KINDS:
        obj = {
            "apiVersion": "aifirst.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": "x"},
            "status": {"phase": "Nope"},
        }
        assert assess(health_script("aifirst.dev", kind), obj) == Health("Unknown", "Unknown phase Nope")


def test_the_harness_has_only_what_argo_cd_opens(tmp_path: Path) -> None:
    """Argo CD opens no string library: a script that relies on it must fail here as it would there."""
    script = tmp_path / "health.lua"
    for use in ('string.format("%d steps", 3)', '("steps"):upper()', "math.floor(2.5)"):
        script.write_text(f'hs = {{}}\nhs.status = "Healthy"\nhs.message = {use}\nreturn hs\n')
        with pytest.raises(RuntimeError, match=r"attempt to (index|call) a non-"):
            assess(script, {"metadata": {"name": "x"}})
    script.write_text('hs = {}\nhs.status = "Healthy"\nhs.message = "3 steps"\nreturn hs\n')
    assert assess(script, {"metadata": {"name": "x"}}) == Health("Healthy", "3 steps")


def test_argocd_cm_patch_carries_the_same_scripts() -> None:
    data = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())["data"]
    for kind in KINDS:
        assert (
            data[f"resource.customizations.health.aifirst.dev_{kind}"] == health_script("aifirst.dev", kind).read_text()
        ), f"copy charts/airun/argocd/resource_customizations/aifirst.dev/{kind}/health.lua into the patch"


def test_the_kustomize_component_merges_the_checks_into_argocd_cm(tmp_path: Path) -> None:
    """`kubectl kustomize` (kustomize built into kubectl) on an Argo CD install that uses the component."""
    (tmp_path / "argocd-cm.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "argocd-cm", "namespace": "argocd"},
                "data": {"application.instanceLabelKey": "argocd.argoproj.io/instance"},
            }
        )
    )
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["argocd-cm.yaml"], "components": [os.path.relpath(ARGOCD, tmp_path)]})
    )
    built = subprocess.run(
        [str(find_binaries() / "kubectl"), "kustomize", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    (config,) = list(yaml.safe_load_all(built))
    assert config["metadata"] == {"name": "argocd-cm", "namespace": "argocd"}
    assert config["data"]["application.instanceLabelKey"] == "argocd.argoproj.io/instance"
    for kind in KINDS:
        key = f"resource.customizations.health.aifirst.dev_{kind}"
        assert config["data"][key] == health_script("aifirst.dev", kind).read_text()
