"""A template reads only the steps it depends on (docs/architecture.md, "What is checked where"): the
lexical scan of what a template reads, and the spec check built on it."""

from __future__ import annotations

from controller.api.workflow import Reason, StepPhase, WorkflowPhase
from controller.engine import dag
from controller.engine.templating import StepReads, step_reads
from controller.engine.validation import spec_errors, undeclared_reads
from tests.unit.simulation import CAPS, run, step, workflow


def test_named_reads_are_found_in_attributes_and_subscripts() -> None:
    reads = step_reads({"a": "{{ steps.one.outputs.x }}", "b": ["x {{ steps['two-2'].outputs }} y", 3]})
    assert reads == StepReads(frozenset({"one", "two-2"}))


def test_text_strings_and_other_names_are_not_reads() -> None:
    reads = step_reads("steps.a {{ 'steps.b' }} {{ params.steps }} {{ mysteps.c }} {{ x.steps.d }}")
    assert reads == StepReads()


def test_reads_through_an_expression_are_dynamic() -> None:
    assert step_reads("{{ steps[params.which].outputs }}").dynamic
    assert step_reads("{% for name in steps %}{{ name }}{% endfor %}").dynamic
    assert not step_reads("{{ steps.a.outputs | tojson }}").dynamic


def test_ancestors_are_transitive() -> None:
    spec = workflow(step("a"), step("b", deps=("a",)), step("c", deps=("b",)), step("d"))
    found = dag.ancestors(spec.steps)
    assert found["c"] == {"a", "b"} and found["a"] == frozenset() and found["d"] == frozenset()


def test_a_read_through_a_transitive_dependency_is_allowed() -> None:
    spec = workflow(
        step("a"),
        step("b", deps=("a",)),
        step("c", deps=("b",), inputs={"path": "{{ steps.a.outputs.path }}.copy", "content": "x"}),
    )
    assert spec_errors(spec, CAPS) == []


def test_a_read_of_a_step_not_depended_on_names_the_missing_dependency() -> None:
    spec = workflow(
        step("a"),
        step("other"),
        step("b", deps=("other",), inputs={"path": "{{ steps.a.outputs.path }}.copy", "content": "x"}),
    )
    errors = undeclared_reads(spec)
    assert errors == [
        "step 'b' reads steps.a but does not depend on a, which may not have run yet: add dependsOn: [other, a]"
    ]
    assert errors[0] in "; ".join(spec_errors(spec, CAPS))


def test_compensation_templates_are_checked_and_may_read_their_own_step() -> None:
    undo = {"capability": "io.fs.delete", "inputs": {"path": "{{ steps.b.outputs.path }}{{ steps.a.outputs.path }}"}}
    spec = workflow(step("a"), step("b", compensation=undo))
    assert undeclared_reads(spec) == [
        "step 'b' reads steps.a but does not depend on a, which may not have run yet: add dependsOn: [a]"
    ]


def test_reads_of_itself_unknown_steps_and_expressions_are_refused() -> None:
    spec = workflow(
        step("a", inputs={"path": "{{ steps.a.outputs.path }}{{ steps.ghost.outputs.x }}", "content": "x"}),
        step("b", deps=("a",), inputs={"path": "{{ steps[params.p].outputs.path }}", "content": "x"}),
    )
    errors = undeclared_reads(spec)
    assert errors[0] == "step 'a' reads steps.ghost, which is not a step of this workflow"
    assert errors[1].startswith("step 'a' reads its own steps.a in its inputs")
    assert errors[2].startswith("step 'b' reads steps by an expression")
    assert len(errors) == 3


def test_the_engine_refuses_such_a_workflow_before_any_step_runs() -> None:
    """A workflow created while the webhooks were bypassed gets the same check from the engine."""
    spec = workflow(step("a"), step("b", inputs={"path": "{{ steps.a.outputs.path }}.copy", "content": "x"}))
    trace = run(spec)
    assert trace.status.phase is WorkflowPhase.FAILED and trace.status.reason == Reason.INVALID_SPEC
    assert "add dependsOn: [a]" in (trace.status.message or "")
    assert trace.started == [] and {s.phase for s in trace.status.steps} == {StepPhase.SKIPPED}
