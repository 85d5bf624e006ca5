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


def test_the_exports_carry_every_tool_with_its_schema() -> None:
    import re

    offered = tools.all_tools(SPECS)
    names = [t.name for t in offered]
    assert {"undo", "begin_transaction", "commit_transaction", "rollback_transaction", "transaction_status"} <= set(
        names
    )
    assert "io-fs-restore" not in names  # internal
    mcp = tools.export_mcp(offered)["tools"]
    write = next(t for t in mcp if t["name"] == "io-fs-write_file")
    assert write["inputSchema"]["required"] == ["path", "content"]
    assert write["inputSchema"]["properties"]["transaction"]["type"] == "string"
    assert write["annotations"]["readOnlyHint"] is False
    openai = tools.export_openai(offered)
    assert [f["function"]["name"] for f in openai] == names
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", f["function"]["name"]) for f in openai)  # OpenAI's rule
    fn = next(f["function"] for f in openai if f["function"]["name"] == "io-fs-write_file")
    assert fn["parameters"] == write["inputSchema"] and fn["description"].startswith("io.fs.write_file\n")


def test_the_reserved_transaction_argument_never_reaches_the_capability() -> None:
    inputs, transaction = tools.split_arguments({"path": "a", "content": "b", "transaction": "tx-abc"})
    assert inputs == {"path": "a", "content": "b"} and transaction == "tx-abc"
    manifest = tools.one_step_workflow(SPECS["io.fs.write_file"], inputs, transaction=transaction)
    assert manifest["metadata"]["labels"]["aifirst.dev/transaction"] == "tx-abc"
    assert "transaction" not in manifest["spec"]["steps"][0]["inputs"]
