"""Jinja2 templates in step inputs, rendered in a sandbox with strict undefined: a reference to an
unknown value is an error naming it, never an empty string.

Templates are written by authors, so a template may be hostile: `{{ 7 ** 2000000 }}`, nested loops over
large ranges, `'a' * 10**9`. Two paths keep that from stalling anyone:

- the fast path: a template that only reads values (`{{ params.x }}`, `{{ steps.a.outputs.path }}`,
  literals, a few linear filters) is rendered here, in-process: its cost is bounded by the size of what
  it reads. Whether a template qualifies is decided once per source, by walking its syntax tree.
- anything else goes to the isolated renderer that the shell installs (`install`): worker processes with
  a time limit, an output cap and a memory limit (controller.operator.template_sandbox). This module
  manages no process: it only calls the interface.

A caller that must never block (the operator's event loop) renders inside `non_blocking()`: a template
that needs the isolated renderer then raises NeedsIsolation, and the caller runs the same pure function
again in a worker thread. Every failure of a render, whatever Python raised, is a TemplateError whose
message starts with where the template is (`inputs.path: ...`)."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT_BYTES = 1024 * 1024  # a rendered string larger than this is refused (an object is 1.5 MiB at most)
# Longer templates are never judged nor compiled in-process: compiling costs far more than rendering
# (70,000 `{{ params.x }}` take 20 s to compile), so only short ones may take the fast path.
MAX_FAST_SOURCE = 1024
MAX_POWER_BITS = 16384  # `**` whose result would be larger is refused before it is computed
# Filters whose cost is linear in their input and that take no argument that could inflate their output
# (widths, indents, repeat counts): a template using only these stays on the fast path.
LINEAR_FILTERS = frozenset(
    {"lower", "upper", "trim", "string", "tojson", "length", "count", "first", "last", "int", "float", "abs"}
)
FILTERS_WITH_LITERAL_ARGS = frozenset({"default", "d"})  # `default('x')`: the output is the input or the literal


class TemplateError(ValueError):
    pass


class NeedsIsolation(Exception):
    """The template is not trivially safe and the caller said it must not block: run the same (pure)
    computation again where blocking is allowed, a worker thread."""


class IsolatedRenderer(Protocol):
    def render(self, source: str, context: Mapping[str, Any], *, keep_types: bool) -> Any:
        """Renders SOURCE (see render_source) somewhere it can be stopped; blocks until done. Raises
        TemplateError with a message that does not yet say where the template is."""
        ...


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, and `*` and `**` refused when their result would be huge: those cost
    their result's size before anything could look at it."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and _is_int(left) and _is_int(right) and right > 0:  # noqa: SIM102
            if max(abs(left).bit_length() - 1, 0) * right > MAX_POWER_BITS:
                raise SecurityError(f"{left} ** {right} is too large")
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and _is_int(times)
                    and len(sequence) * times > MAX_OUTPUT_BYTES
                ):
                    raise SecurityError(f"the template would produce more than {MAX_OUTPUT_BYTES} bytes")
        return super().call_binop(context, operator, left, right)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_ENV = _BoundedSandbox(undefined=jinja2.StrictUndefined, autoescape=False)
_isolated: IsolatedRenderer | None = None
_may_block: ContextVar[bool] = ContextVar("airun_templates_may_block", default=True)


def install(renderer: IsolatedRenderer | None) -> IsolatedRenderer | None:
    """Installs the renderer of templates that are not trivially safe; returns the one it replaces.
    Without one (pure tests, tools) such templates are rendered in-process, with the sandbox's limits
    on `*` and `**` and the output cap but no time limit."""
    global _isolated
    previous, _isolated = _isolated, renderer
    return previous


@contextlib.contextmanager
def non_blocking() -> Iterator[None]:
    """Within this block a template that would need the isolated renderer raises NeedsIsolation."""
    token = _may_block.set(False)
    try:
        yield
    finally:
        _may_block.reset(token)


def render(value: Any, context: Mapping[str, Any], *, where: str = "inputs", keep_types: bool = True) -> Any:
    """Renders every string inside VALUE (dicts and lists are walked). With KEEP_TYPES a string that is
    exactly one expression, such as "{{ steps.a.outputs.count }}", keeps the type of its value."""
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value
        try:
            fast = _fast_path(value, keep_types)
            if fast is not None:
                return _run(fast, context)
            if not _may_block.get():
                raise NeedsIsolation(where)
            if _isolated is not None:
                return _isolated.render(value, context, keep_types=keep_types)
            return render_source(value, context, keep_types=keep_types)
        except TemplateError as error:
            raise TemplateError(f"{where}: {error}") from error
    if isinstance(value, Mapping):
        return {k: render(v, context, where=f"{where}.{k}", keep_types=keep_types) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context, where=f"{where}[{i}]", keep_types=keep_types) for i, v in enumerate(value)]
    return value


def render_source(source: str, context: Mapping[str, Any], *, keep_types: bool) -> Any:
    """Renders one template string, whatever it does; what the isolated renderer runs in its worker.
    Output is counted as it is produced, so a render that would exceed the cap stops at the cap. Raises
    TemplateError (without the `where` prefix) for every failure."""
    return _run(_compiled(source, keep_types), context)


# -- compiling, and the verdict of the fast path ------------------------------------------------------

_Compiled = Callable[[Mapping[str, Any]], Any]


def _single_expression(source: str) -> str | None:
    stripped = source.strip()
    if stripped.startswith("{{") and stripped.endswith("}}") and stripped.count("{{") == 1:
        return stripped[2:-2].strip()
    return None


def _compile(source: str, keep_types: bool) -> _Compiled:
    try:
        expression = _single_expression(source) if keep_types else None
        if expression is not None:
            compiled = _ENV.compile_expression(expression, undefined_to_none=False)

            def evaluate(context: Mapping[str, Any]) -> Any:
                result = compiled(**context)
                if isinstance(result, jinja2.Undefined):
                    str(result)  # raises UndefinedError with the name of what is missing
                return result

            return evaluate
        template = _ENV.from_string(source)
        return lambda context: _bounded_join(template.generate(**context))
    except Exception as error:
        raise _template_error(error) from error


_compiled = functools.lru_cache(maxsize=256)(_compile)  # a worker renders the same few templates again


@functools.lru_cache(maxsize=4096)
def _fast_path(source: str, keep_types: bool) -> _Compiled | None:
    """The compiled template when SOURCE only reads values (cached by source), else None. A syntax
    error is raised here, at once: no need to isolate a template that does not parse."""
    if len(source) > MAX_FAST_SOURCE:
        return None
    try:
        tree = _ENV.parse(source)
    except Exception as error:
        raise _template_error(error) from error
    return _compile(source, keep_types) if _only_reads(tree) else None


_READING_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Getattr,
    nodes.Const,
    nodes.Concat,
    nodes.List,
    nodes.Tuple,
    nodes.Dict,
    nodes.Pair,
)


def _only_reads(node: nodes.Node) -> bool:
    if isinstance(node, nodes.Getitem):
        if not isinstance(node.arg, nodes.Const):
            return False
    elif isinstance(node, nodes.Filter):
        literal_args = node.name in FILTERS_WITH_LITERAL_ARGS and all(isinstance(a, nodes.Const) for a in node.args)
        if node.name not in LINEAR_FILTERS | FILTERS_WITH_LITERAL_ARGS or (node.args and not literal_args):
            return False
        if node.kwargs or node.dyn_args or node.dyn_kwargs or node.node is None:
            return False
    elif not isinstance(node, _READING_NODES):
        return False
    return all(_only_reads(child) for child in node.iter_child_nodes())


# -- running -------------------------------------------------------------------------------------------


def _run(compiled: _Compiled, context: Mapping[str, Any]) -> Any:
    try:
        result = compiled(context)
    except TemplateError:
        raise
    except Exception as error:
        raise _template_error(error) from error
    if isinstance(result, str) and len(result) > MAX_OUTPUT_BYTES // 4 and len(result.encode()) > MAX_OUTPUT_BYTES:
        raise TemplateError(f"the template produced more than {MAX_OUTPUT_BYTES} bytes")
    return result


def _bounded_join(chunks: Iterator[str]) -> str:
    parts: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_OUTPUT_BYTES:
            raise TemplateError(f"the template produced more than {MAX_OUTPUT_BYTES} bytes")
        parts.append(chunk)
    return "".join(parts)


def _template_error(error: BaseException) -> TemplateError:
    """One clear message for whatever a render raised: Jinja's own errors as Jinja words them, Python's
    (ValueError from a huge int, OverflowError, RecursionError, TypeError, ...) with their type."""
    if isinstance(error, TemplateError):
        return error
    if isinstance(error, jinja2.UndefinedError):
        return TemplateError(error.message or str(error))
    if isinstance(error, jinja2.TemplateError):
        return TemplateError(str(error))
    if isinstance(error, MemoryError):
        return TemplateError("the template needed more memory than allowed")
    if isinstance(error, RecursionError):
        return TemplateError("the template nests too deeply")
    return TemplateError(f"{type(error).__name__}: {error}")


# -- what a template reads -----------------------------------------------------------------------------

# The code of a template (`{{ ... }}`, `{% ... %}`), where names are read; the rest is literal text.
_CODE = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.DOTALL)
# Scanned left to right, so a string literal is skipped whole: `steps.NAME` or `steps['NAME']` (a step
# named in the template itself), a string literal, or any other `steps` (read by an expression).
_READ = re.compile(
    r"(?<![\w.])steps\s*(?:\.\s*(?P<attr>[A-Za-z_]\w*)|\[\s*(?P<quote>['\"])(?P<key>[^'\"\\]*)(?P=quote)\s*\])"
    r"|(?P<string>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
    r"|(?P<bare>(?<![\w.])steps(?!\w))",
    re.DOTALL,
)


@dataclass(frozen=True)
class StepReads:
    """The steps whose outputs (or phase) a template reads: NAMED as written (`steps.a`, `steps['a-b']`);
    DYNAMIC when it also reaches `steps` in a way no name can be read from (`steps[params.which]`, a loop
    over `steps`)."""

    named: frozenset[str] = frozenset()
    dynamic: bool = False

    def __or__(self, other: StepReads) -> StepReads:
        return StepReads(self.named | other.named, self.dynamic or other.dynamic)


def step_reads(value: Any) -> StepReads:
    """What the templates inside VALUE (dicts and lists are walked) read of `steps`. A lexical scan, not a
    parse: linear in the size of VALUE, so the admission webhook may run it on any spec (parsing a large
    template takes seconds). String literals inside the code do not count, except as a subscript of
    `steps`."""
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return StepReads()
        named: set[str] = set()
        dynamic = False
        for match in _CODE.finditer(value):
            code = match.group(1) if match.group(1) is not None else match.group(2)
            for found in _READ.finditer(code):
                if found.group("bare"):
                    dynamic = True
                elif not found.group("string"):
                    named.add(found.group("attr") or found.group("key"))
        return StepReads(frozenset(named), dynamic)
    reads = StepReads()
    if isinstance(value, Mapping):
        for item in value.values():
            reads |= step_reads(item)
    elif isinstance(value, list):
        for item in value:
            reads |= step_reads(item)
    return reads
