"""Property tests of hostile templates: random templates from a grammar of Jinja fragments (loops, `**`,
big multiplications, width filters, undefined names, deep nesting) over random inputs. The renderer
either returns a value or raises TemplateError, within its time bound, never anything else; on the
event loop (non_blocking) it never takes more than an instant; and every workflow made of such
templates reaches a terminal phase."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.api.workflow import TERMINAL_PHASES
from controller.engine import templating
from controller.operator.template_sandbox import TemplateSandbox
from tests.unit.simulation import run, step, workflow

TIME_LIMIT = 0.5  # seconds; the operator's is 2 s: the property is the same, the test faster
# Seconds for a worker to be killed and another to start: 4.6 s was measured on this 2-core machine at a load
# average of 10. Without the bound a hostile render here runs for minutes or for ever, so the property holds.
SLACK = 6.0

SMALL = st.integers(min_value=-3, max_value=12).map(str)
HUGE = st.sampled_from(["100000", "999999999", "10 ** 9", "2000000", "7 ** 99"])
NUMBERS = st.one_of(SMALL, HUGE)
ATOMS = st.one_of(
    NUMBERS,
    st.sampled_from(
        [
            "params.text",
            "params.count",
            "params.items",
            "params.nested.deep",
            "steps.a.outputs.path",
            "missing",
            "params.missing",
            "'a'",
            "'{:>999999999}'",
            "params.__class__",
            "none",
        ]
    ),
)


def _expressions() -> st.SearchStrategy[str]:
    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(inner, NUMBERS).map(lambda t: f"({t[0]} ** {t[1]})"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]} * {t[1]})"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]} + {t[1]})"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]} ~ {t[1]})"),
            st.tuples(inner, NUMBERS).map(lambda t: f"({t[0]} // {t[1]})"),
            st.tuples(inner, NUMBERS).map(lambda t: f"({t[0]} | center({t[1]}))"),
            st.tuples(inner, NUMBERS).map(lambda t: f"({t[0]} | indent({t[1]}))"),
            st.tuples(inner, NUMBERS).map(lambda t: f"({t[0]} | tojson({t[1]}))"),
            inner.map(lambda e: f"({e} | upper)"),
            inner.map(lambda e: f"({e} | default('x'))"),
            inner.map(lambda e: f"({e} | string | length)"),
            inner.map(lambda e: f"{e}.format(1)"),
            NUMBERS.map(lambda n: f"(range({n}) | list)"),
            st.tuples(inner, inner).map(lambda t: f"[{t[0]}, {t[1]}]"),
        )

    return st.recursive(ATOMS, extend, max_leaves=6)


def _templates() -> st.SearchStrategy[str]:
    expression = _expressions()

    def extend(body: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(NUMBERS, body).map(lambda t: f"{{% for i in range({t[0]}) %}}{t[1]}{{% endfor %}}"),
            st.tuples(expression, body).map(lambda t: f"{{% if {t[0]} %}}{t[1]}{{% endif %}}"),
            st.tuples(body, body).map(lambda t: t[0] + t[1]),
            body.map(lambda b: f"{{% macro m(n) %}}{b}{{{{ m(n + 1) }}}}{{% endmacro %}}{{{{ m(0) }}}}"),
        )

    leaves = st.one_of(
        expression.map(lambda e: f"{{{{ {e} }}}}"),
        st.sampled_from(["text ", "{{ ", "{% for %}", "{{ params.text }}", "{{ steps.a.outputs.path }}"]),
    )
    return st.recursive(leaves, extend, max_leaves=5)


INPUTS = st.fixed_dictionaries(
    {
        "text": st.text(max_size=20),
        "count": st.one_of(st.integers(-5, 10**6), st.just(10**9)),
        "items": st.lists(st.integers(0, 100), max_size=5),
        "nested": st.fixed_dictionaries({"deep": st.one_of(st.text(max_size=5), st.integers())}),
    }
)


@pytest.fixture(scope="module")
def isolated() -> Iterator[TemplateSandbox]:
    with TemplateSandbox(time_limit=TIME_LIMIT) as sandbox:
        previous = templating.install(sandbox.start())
        try:
            yield sandbox
        finally:
            templating.install(previous)


def _context(params: dict[str, Any]) -> dict[str, Any]:
    return {"params": params, "steps": {"a": {"outputs": {"path": "db/x.json"}}}, "workflow": {"name": "w"}}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(template=_templates(), params=INPUTS, keep_types=st.booleans())
def test_a_render_returns_a_value_or_a_template_error_within_the_bound(
    isolated: TemplateSandbox, template: str, params: dict[str, Any], keep_types: bool
) -> None:
    started = time.monotonic()
    try:
        templating.render({"x": template}, _context(params), keep_types=keep_types)
    except templating.TemplateError as error:
        assert str(error).startswith("inputs.x")
    assert time.monotonic() - started < TIME_LIMIT + SLACK


class _Refusing:
    """An isolated renderer that must never be called."""

    def render(self, source: str, context: Any, *, keep_types: bool) -> Any:
        raise AssertionError(f"the isolated renderer was called on the event loop: {source!r}")


@settings(max_examples=200, deadline=None)
@given(template=_templates(), params=INPUTS)
def test_on_the_event_loop_a_render_never_blocks(template: str, params: dict[str, Any]) -> None:
    previous = templating.install(_Refusing())
    started = time.monotonic()
    try:
        with templating.non_blocking():
            templating.render({"x": template}, _context(params))
    except (templating.TemplateError, templating.NeedsIsolation):
        pass
    finally:
        templating.install(previous)
    # Only short templates that read bounded values are compiled and run here: milliseconds, and a
    # second on a machine busy with other work.
    assert time.monotonic() - started < 1.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    templates=st.lists(_templates(), min_size=1, max_size=3),
    compensation=st.one_of(st.none(), _templates()),
    params=INPUTS,
)
def test_every_workflow_of_hostile_templates_reaches_a_terminal_phase(
    isolated: TemplateSandbox, templates: list[str], compensation: str | None, params: dict[str, Any]
) -> None:
    steps = []
    for i, template in enumerate(templates):
        extra: dict[str, Any] = {}
        if compensation is not None:
            extra["compensation"] = {"capability": "io.fs.delete", "inputs": {"path": compensation}}
        deps = (f"s{i - 1}",) if i else ()
        steps.append(step(f"s{i}", deps=deps, inputs={"path": f"s{i}.txt", "content": template}, **extra))
    trace = run(workflow(*steps, params=params))
    assert trace.status.phase in TERMINAL_PHASES
    for s in trace.status.steps:
        assert s.error is None or s.error.startswith(("inputs", "denied", "the operator")), s.error
