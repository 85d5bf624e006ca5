"""`when:` conditions of policy rules (pure): CEL expressions over what a step will do.

The CEL implementation is `common-expression-language` (Rust's cel-interpreter behind Python bindings):
about 9 µs per evaluation of a typical condition against 275 µs for the pure-Python `cel-python`, and it
follows the CEL specification's standard library (macros, `matches` on RE2-like linear-time regexes,
timestamps). It parses but has no static type checker, so `compile_condition` checks what can be known
before any step exists: the syntax (with the position of the error), the variables (only the documented
ones, and variables bound by comprehension macros), the functions (only CEL's standard ones), and one trial
evaluation against a typed sample of the variables, which catches type errors such as `1 + "a"` or
`principal.user > 3` that do not depend on a step's inputs.

Variables (docs/policies.md):
  principal  {user: string, groups: list(string)}
  namespace  string
  workflow   {name: string, labels: map(string, string), params: map(string, dyn)}
  step       {name: string, capability: string, risk: string, inputs: map(string, dyn)}
             (inputs as rendered, secret references as references, never values)
  now        timestamp
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import cel

VARIABLES = frozenset({"principal", "namespace", "workflow", "step", "now"})
NAMESPACE, _NAMESPACE = "namespace", "namespac_"  # see _spelled
MAX_SOURCE = 4096

# CEL's standard functions and operators, as the parser names them (references()["functions"]).
STANDARD_FUNCTIONS = frozenset(
    {
        "!_",
        "-_",
        "@in",
        "@not_strictly_false",
        "_!=_",
        "_%_",
        "_&&_",
        "_*_",
        "_+_",
        "_-_",
        "_/_",
        "_<=_",
        "_<_",
        "_==_",
        "_>=_",
        "_>_",
        "_?_:_",
        "_[_]",
        "_||_",
        "bool",
        "bytes",
        "contains",
        "double",
        "duration",
        "dyn",
        "endsWith",
        "getDate",
        "getDayOfMonth",
        "getDayOfWeek",
        "getDayOfYear",
        "getFullYear",
        "getHours",
        "getMilliseconds",
        "getMinutes",
        "getMonth",
        "getSeconds",
        "int",
        "matches",
        "size",
        "startsWith",
        "string",
        "timestamp",
        "type",
        "uint",
    }
)
_BOUND = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
_POSITION = re.compile(r"<input>:(\d+):(\d+):\s*(.*)")
_MISSING = ("No such key", "no such key", "Undefined variable", "NoSuchKey")

_SAMPLE: dict[str, Any] = {
    "principal": {"user": "system:serviceaccount:agents:planner", "groups": ["system:serviceaccounts"]},
    _NAMESPACE: "default",
    "workflow": {"name": "sample", "labels": {}, "params": {}},
    "step": {"name": "sample", "capability": "io.fs.write_file", "risk": "LOW", "inputs": {}},
    "now": datetime(2026, 1, 1, tzinfo=UTC),
}


class Variables:
    """The variables of one decision, shared by every condition evaluated for it. Converting values to
    CEL costs about 10 µs per nested map or list, so each root variable is converted only with the parts
    that the conditions read (a condition on `step.inputs.path` converts {step: {inputs: {path: ...}}}),
    and again only when a later condition reads more of it; evaluating a compiled condition then costs
    about 1 µs."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)
        self._context = cel.Context()
        self._paths: dict[str, set[tuple[str, ...]]] = {}

    def context_for(self, paths: tuple[tuple[str, ...], ...]) -> cel.Context:
        changed = []
        for path in paths:
            known = self._paths.setdefault(path[0], set())
            if path not in known:
                known.add(path)
                changed.append(path[0])
        for root in dict.fromkeys(changed):
            key = _NAMESPACE if root == NAMESPACE else root
            if key in self.values:
                self._context.add_variable(key, _pruned(self.values[key], [p[1:] for p in self._paths[root]]))
        return self._context


def _pruned(value: Any, rests: list[tuple[str, ...]]) -> Any:
    """VALUE with only what the field paths RESTS lead to (whole where a path ends)."""
    if any(not rest for rest in rests) or not isinstance(value, Mapping):
        return value
    keys = dict.fromkeys(rest[0] for rest in rests)
    return {k: _pruned(value[k], [r[1:] for r in rests if r[0] == k]) for k in keys if k in value}


class ConditionError(ValueError):
    """A condition that cannot be used (at apply time) or that failed on a step (at decision time).
    MISSING: it failed because it read a key or field that is not there (an input the step has not)."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class Condition:
    source: str
    program: cel.Program
    paths: tuple[tuple[str, ...], ...] = ()  # the variables and fields it reads, e.g. step.inputs.path

    def holds(self, variables: Variables) -> bool:
        """Whether the condition is true for VARIABLES. An evaluation error or a result that is not a
        boolean raises ConditionError (the caller makes it a DENY quoting the error)."""
        try:
            result = self.program.execute(variables.context_for(self.paths))
        except Exception as error:  # the library raises KeyError, TypeError, ValueError, RuntimeError
            text = f"{type(error).__name__}: {_first_line(error)}"
            missing = isinstance(error, KeyError) or any(marker in text for marker in _MISSING)
            raise ConditionError(text, missing=missing) from error
        if not isinstance(result, bool):
            raise ConditionError(f"the condition gave {type(result).__name__} {_short(repr(result))}, not a boolean")
        return result

    def seen(self, variables: Variables) -> dict[str, Any]:
        """The values the condition read (by dotted path), for status and audit: what it decided on.
        As they are: callers redact them, then bound them (`bounded`), before they leave the engine."""
        found: dict[str, Any] = {}
        for path in self.paths:
            value: Any = variables.values
            for part in (_NAMESPACE if i == 0 and p == NAMESPACE else p for i, p in enumerate(path)):
                if not isinstance(value, Mapping) or part not in value:
                    break
                value = value[part]
            else:
                found[".".join(path)] = value
        return found


MAX_SEEN_CHARS = 256


def _short(text: str) -> str:
    return text if len(text) <= MAX_SEEN_CHARS else text[: MAX_SEEN_CHARS - 1] + "…"


def bounded(value: Any) -> Any:
    """VALUE, or its JSON text cut to MAX_SEEN_CHARS when it is longer (redact first: text hides nothing)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str | int | float | bool) or value is None:
        return _short(value) if isinstance(value, str) else value
    text = json.dumps(value, default=str, sort_keys=True)
    return value if len(text) <= MAX_SEEN_CHARS else _short(text)


def _first_line(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


@lru_cache(maxsize=4096)
def compile_condition(source: str) -> Condition:
    """SOURCE compiled and checked; ConditionError says what is wrong, with line:column for syntax errors.
    Cached: the operator compiles each rule's condition once, whatever the number of decisions."""
    if len(source) > MAX_SOURCE:
        raise ConditionError(f"the condition is {len(source)} characters long; at most {MAX_SOURCE}")
    try:
        program = cel.compile(_spelled(source))
    except ValueError as error:
        raise ConditionError(_syntax_message(str(error))) from error
    references = program.references()
    bound = set(_BOUND.findall(source))
    used = {NAMESPACE if v == _NAMESPACE else v for v in references.get("variables", [])}
    unknown_variables = sorted(used - VARIABLES - bound)
    if unknown_variables:
        raise ConditionError(
            f"unknown variable {', '.join(unknown_variables)}: the variables are {', '.join(sorted(VARIABLES))}"
        )
    unknown_functions = sorted(set(references.get("functions", [])) - STANDARD_FUNCTIONS)
    if unknown_functions:
        raise ConditionError(f"unknown function {', '.join(unknown_functions)}")
    depth = _comprehension_depth(source)
    if depth > MAX_COMPREHENSION_DEPTH:
        raise ConditionError(
            f"the condition nests {depth} comprehension macros (all, exists, exists_one, map, filter); at most "
            f"{MAX_COMPREHENSION_DEPTH}: the cost of evaluating one grows as the product of the lists' sizes"
        )
    condition = Condition(source, program, _paths(source, bound))
    _trial(condition)
    return condition


# `namespace` is a reserved word of CEL, which its parsers refuse as an identifier; the documented variable
# keeps its name: outside string literals it is read as an identifier of the same length (so that the
# columns of error messages stay right), which the activation binds.
_NAMESPACE_WORD = re.compile(r"(?<![\w.])namespace(?!\w)")
_STRING = re.compile(r"'''(?:.|\n)*?'''|\"\"\"(?:.|\n)*?\"\"\"|'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")


def _spelled(source: str) -> str:
    """SOURCE with the variable `namespace` outside string literals renamed (see above)."""
    parts, last = [], 0
    for match in _STRING.finditer(source):
        parts.append(_NAMESPACE_WORD.sub(_NAMESPACE, source[last : match.start()]))
        parts.append(match.group(0))
        last = match.end()
    parts.append(_NAMESPACE_WORD.sub(_NAMESPACE, source[last:]))
    return "".join(parts)


MAX_COMPREHENSION_DEPTH = 1
_MACRO = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(")
_PATH = re.compile(r"(?<![\w.\"'])([A-Za-z_][A-Za-z0-9_]*)((?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*)(\s*\()?")


def _comprehension_depth(source: str) -> int:
    """How deeply comprehension macros nest, by parentheses (string literals skipped)."""
    text = _without_strings(source)
    depth, deepest, stack = 0, 0, []
    index = 0
    while index < len(text):
        match = _MACRO.match(text, index)
        if match:
            depth += 1
            deepest = max(deepest, depth)
            stack.append(True)
            index = match.end()
            continue
        if text[index] == "(":
            stack.append(False)
        elif text[index] == ")" and stack and stack.pop():
            depth -= 1
        index += 1
    return deepest


def _without_strings(source: str) -> str:
    return _STRING.sub('""', source)


def _paths(source: str, bound: set[str]) -> tuple[tuple[str, ...], ...]:
    """The dotted paths from a variable that SOURCE reads (step.inputs.path), methods left out
    (`step.inputs.path.startsWith(...)` reads step.inputs.path)."""
    found: list[tuple[str, ...]] = []
    for match in _PATH.finditer(_without_strings(source)):
        root, rest, call = match.groups()
        if root not in VARIABLES:
            continue
        if root in bound:  # a macro's variable of the same name: the whole variable, to be safe
            rest, call = "", None
        parts = [root, *(p.strip() for p in rest.split(".")[1:])]
        if call and len(parts) > 1:
            parts = parts[:-1]
        path = tuple(parts)
        if path not in found:
            found.append(path)
    return tuple(found)


def _trial(condition: Condition) -> None:
    """One evaluation against typed sample values: a type error that no step's inputs could fix is
    refused now. Errors that depend on the inputs (a key the sample has not) are left to decision time."""
    try:
        condition.holds(Variables(_SAMPLE))
    except ConditionError as error:
        if error.missing:
            return
        raise


def _syntax_message(text: str) -> str:
    match = _POSITION.search(text)
    if match is None:
        return text.strip().splitlines()[0] if text.strip() else "the condition does not parse"
    line, column, message = match.groups()
    return f"line {line}, column {column}: {message.strip()}"


def activation(
    *,
    user: str,
    groups: list[str],
    namespace: str,
    workflow: Mapping[str, Any],
    step: Mapping[str, Any],
    now: datetime,
) -> Variables:
    """The variables a condition sees, in the shapes documented above."""
    return Variables(
        {
            "principal": {"user": user, "groups": list(groups)},
            _NAMESPACE: namespace,
            "workflow": {
                "name": workflow.get("name", ""),
                "labels": dict(workflow.get("labels") or {}),
                "params": dict(workflow.get("params") or {}),
            },
            "step": {
                "name": step.get("name", ""),
                "capability": step.get("capability", ""),
                "risk": step.get("risk", ""),
                "inputs": dict(step.get("inputs") or {}),
            },
            "now": now,
        }
    )
