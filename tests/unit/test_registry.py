"""The capability registry: coherence rules, the shipped specs, and plugins from entry points."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from controller.api.capability import CapabilitySpec
from controller.capabilities import registry


def spec(**changes: object) -> CapabilitySpec:
    base: dict[str, object] = {
        "id": "x.y",
        "description": "d",
        "risk": {"level": "MEDIUM", "reason": "r"},
        "sideEffects": ["fs.write"],
        "idempotent": True,
        "compensation": {"capability": "io.fs.restore", "inputs": {}},
    }
    return CapabilitySpec.model_validate({**base, **changes})


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"compensation": None}, "R1"),
        ({"sideEffects": ["fs.delete"], "risk": {"level": "LOW", "reason": "r"}}, "R2"),
        ({"sideEffects": ["network.write"], "risk": {"level": "LOW", "reason": "r"}}, "R3"),
        ({"sideEffects": [], "idempotent": False, "compensation": None}, "R4"),
        ({"internal": True}, "R5"),
    ],
)
def test_each_risk_rule_refuses_an_incoherent_spec(changes: dict[str, object], rule: str) -> None:
    problems = registry.risk_problems(spec(**changes))
    assert any(p.startswith(rule + ":") for p in problems), problems


def test_shipped_specs_are_coherent_and_every_one_has_a_handler() -> None:
    loaded = registry.load(include_test=True, include_plugins=False)
    ids = {s.id for s in loaded.list()}
    assert {"io.fs.write_file", "net.http.request", "k8s.apply", "data.json.query", "text.render", "sys.sleep"} <= ids
    for capability in loaded.list():
        assert loaded.handler(capability.id)


def test_incoherent_file_is_refused_naming_the_rule(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        textwrap.dedent("""
        capabilities:
        - id: bad.cap
          description: writes without undo
          risk: {level: LOW, reason: none}
          sideEffects: [fs.write]
          idempotent: true
    """)
    )
    with pytest.raises(registry.CapabilitySpecError, match="R1: side effects without compensation"):
        registry.load(tmp_path, include_plugins=False)


def test_plugin_capabilities_from_an_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "airun_demo_plugin.py").write_text(
        textwrap.dedent("""
        SPECS = [{"id": "demo.hello", "description": "says hello", "risk": {"level": "LOW", "reason": "pure"},
                  "sideEffects": [], "idempotent": True}]

        async def hello(inputs, inv):
            return {"text": "hello " + inputs.get("who", "world")}

        HANDLERS = {"demo.hello": hello}
    """)
    )
    dist = tmp_path / "airun_demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: airun-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[airun.capabilities]\ndemo = airun_demo_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = registry.load()
    assert loaded.get("demo.hello").risk.level.value == "LOW"
    assert loaded.handler("demo.hello")
    sys.modules.pop("airun_demo_plugin", None)


def test_a_capability_whose_compensation_is_missing_is_not_ready_and_refuses_workflows() -> None:
    """GitOps order: the Capability is accepted (no problem), not ready, and workflows using it are refused."""
    from controller.api.workflow import WorkflowSpec
    from controller.capabilities import custom
    from controller.engine import saga

    create = spec(id="cloud.db.create", http={"url": "https://x/dbs"}, compensation={"capability": "cloud.db.delete"})
    assert custom.problems_with(create, builtin={}) == []
    ready, reason, message = custom.readiness(create, {"cloud.db.create": create})
    assert (ready, reason) == (False, "CompensationUnknown") and "'cloud.db.delete'" in message
    workflow = WorkflowSpec.model_validate({"steps": [{"name": "db", "capability": "cloud.db.create"}]})
    errors = saga.spec_errors(workflow, {"cloud.db.create": create})
    assert errors == [
        "step 'db': capability cloud.db.create is not ready: its compensation 'cloud.db.delete' is not a "
        "capability (yet)"
    ]
    delete = spec(id="cloud.db.delete", http={"url": "https://x/dbs"}, compensation=None, sideEffects=[], internal=True)
    known = {"cloud.db.create": create, "cloud.db.delete": delete}
    assert custom.readiness(create, known)[:2] == (True, "Ready")
    assert saga.spec_errors(workflow, known) == []


def test_a_capability_whose_secret_is_missing_is_not_ready_and_refuses_workflows() -> None:
    """GitOps order: the Secret of spec.http.auth may come after the Capability; only the operator's namespace
    counts, and what is said names the Secret and the key the spec names, nothing else of the Secret."""
    from controller.api.workflow import WorkflowSpec
    from controller.capabilities import custom

    auth = {"type": "Bearer", "secretRef": {"name": "db-endpoint", "key": "token"}}
    create = spec(
        id="cloud.db.create",
        http={"url": "https://x/dbs", "auth": auth},
        compensation={"capability": "net.http.request", "inputs": {}},
    )
    known = {"cloud.db.create": create, "net.http.request": spec(id="net.http.request")}
    workflow = WorkflowSpec.model_validate({"steps": [{"name": "db", "capability": "cloud.db.create"}]})

    nothing = custom.SecretKeys("airun-system", {"other": frozenset({"token"})})
    ready, reason, message = custom.readiness(create, known, nothing)
    assert (ready, reason) == (False, "SecretMissing")
    assert "Secret 'db-endpoint' is not in the operator's namespace 'airun-system' (yet)" in message
    assert custom.credential_refusals(workflow, known, nothing) == [
        "step 'db': capability cloud.db.create is not ready: Secret 'db-endpoint' is not in the operator's "
        "namespace 'airun-system' (yet)"
    ]
    other_key = custom.SecretKeys("airun-system", {"db-endpoint": frozenset({"password"})})
    ready, reason, message = custom.readiness(create, known, other_key)
    assert (ready, reason) == (False, "SecretMissing") and "has no key 'token'" in message
    assert "password" not in message  # the Secret's other keys are not told
    there = custom.SecretKeys("airun-system", {"db-endpoint": frozenset({"token", "password"})})
    assert custom.readiness(create, known, there)[:2] == (True, "Ready")
    assert custom.credential_refusals(workflow, known, there) == []
    # Not known (the operator may not list Secrets): nothing claimed, the call itself says what is wrong.
    assert custom.readiness(create, known, None)[:2] == (True, "Ready")

    # A step whose compensation (the capability's own, or the step's override) needs the missing Secret.
    undo = spec(id="cloud.db.delete", http={"url": "https://x/dbs", "auth": auth}, sideEffects=[], internal=True)
    plain = spec(id="cloud.db.make", http={"url": "https://x/dbs"}, compensation={"capability": "cloud.db.delete"})
    known = {**known, "cloud.db.delete": undo, "cloud.db.make": plain}
    overriding = WorkflowSpec.model_validate(
        {"steps": [{"name": "db", "capability": "net.http.request", "compensation": {"capability": "cloud.db.delete"}}]}
    )
    own = WorkflowSpec.model_validate({"steps": [{"name": "db", "capability": "cloud.db.make"}]})
    for workflow in (overriding, own):
        refusals = custom.credential_refusals(workflow, known, nothing)
        assert refusals == [
            f"step 'db': capability cloud.db.delete is not ready: {custom.missing_credentials(undo, nothing)}"
        ]

    # The capability that undoes it needs the missing Secret: not ready either (its compensation could not run).
    assert custom.readiness(plain, known, nothing) == (
        False,
        "SecretMissing",
        f"its compensation 'cloud.db.delete' is not ready: {custom.missing_credentials(undo, nothing)}: workflows "
        "that use cloud.db.make are refused until it is there",
    )
    assert custom.readiness(plain, known, there)[:2] == (True, "Ready")
