"""The MCP tools as data: names, hints derived from the capability specs, and the one-step workflows."""

from __future__ import annotations

from controller.api.workflow import WorkflowSpec
from controller.capabilities import registry
from controller.engine.templating import render
from controller.mcp import tools

SPECS = registry.load(include_test=False, include_plugins=False).specs()


def test_tool_names_map_back_to_capability_ids() -> None:
    for capability in SPECS:
        name = tools.tool_name(capability)
        assert "." not in name and tools.capability_id(name) == capability
    assert tools.capability_id(tools.SUBMIT_WORKFLOW) is None


def test_every_hint_follows_from_the_spec() -> None:
    for spec in SPECS.values():
        hints = tools.tool_annotations(spec)
        assert hints.read_only_hint is (not spec.side_effects)
        assert hints.idempotent_hint is spec.idempotent
        if hints.read_only_hint:
            assert hints.destructive_hint is False
        if set(spec.side_effects) & registry.DESTRUCTIVE or spec.risk.level.value in ("HIGH", "CRITICAL"):
            assert hints.destructive_hint is True, spec.id


def test_caller_values_arrive_as_sent_even_when_they_look_like_templates() -> None:
    arguments = {"path": "a.txt", "content": "{{ secrets }} {% raw %}", "nested": {"x": ["{{ y }}"]}}
    manifest = tools.one_step_workflow(SPECS["io.fs.write_file"], arguments)
    spec = WorkflowSpec.model_validate(manifest["spec"])
    step = spec.steps[0]
    assert step.capability == "io.fs.write_file" and not step.irreversible
    assert step.inputs["path"] == "a.txt"  # plain values stay in the spec, readable
    assert render(step.inputs, {"params": spec.params, "steps": {}}) == arguments
    assert manifest["metadata"]["generateName"] == "mcp-io-fs-write-file-"


def test_a_capability_whose_undo_only_a_step_knows_asks_a_person() -> None:
    manifest = tools.one_step_workflow(SPECS["net.http.request"], {"method": "POST", "url": "https://x.test/"})
    assert manifest["spec"]["steps"][0]["irreversible"] is True
    assert "approval" in (tools.capability_tool(SPECS["net.http.request"]).description or "")
