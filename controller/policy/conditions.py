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

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import cel

VARIABLES = frozenset({"principal", "namespace", "workflow", "step", "now"})
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
    "namespace": "default",
    "workflow": {"name": "sample", "labels": {}, "params": {}},
    "step": {"name": "sample", "capability": "io.fs.write_file", "risk": "LOW", "inputs": {}},
    "now": datetime(2026, 1, 1, tzinfo=UTC),
}


class Variables:
    """The variables of one decision, converted to CEL values once (about 30 µs for a typical step) and
    shared by every condition evaluated for it (about 1 µs each)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)
        self._context: cel.Context | None = None

    @property
    def context(self) -> cel.Context:
        if self._context is None:
            self._context = cel.Context(self.values)
        return self._context


class ConditionError(ValueError):
    """A condition that cannot be used (at apply time) or that failed on a step (at decision time)."""


@dataclass(frozen=True)
class Condition:
    source: str
    program: cel.Program

    def holds(self, variables: Variables) -> bool:
        """Whether the condition is true for VARIABLES. An evaluation error or a result that is not a
        boolean raises ConditionError (the caller makes it a DENY quoting the error)."""
        try:
            result = self.program.execute(variables.context)
        except Exception as error:  # the library raises KeyError, TypeError, ValueError, RuntimeError
            raise ConditionError(f"{type(error).__name__}: {_first_line(error)}") from error
        if not isinstance(result, bool):
            raise ConditionError(f"the condition gave {type(result).__name__} {result!r}, not a boolean")
        return result


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
        program = cel.compile(source)
    except ValueError as error:
        raise ConditionError(_syntax_message(str(error))) from error
    references = program.references()
    bound = set(_BOUND.findall(source))
    unknown_variables = sorted(set(references.get("variables", [])) - VARIABLES - bound)
    if unknown_variables:
        raise ConditionError(
            f"unknown variable {', '.join(unknown_variables)}: the variables are {', '.join(sorted(VARIABLES))}"
        )
    unknown_functions = sorted(set(references.get("functions", [])) - STANDARD_FUNCTIONS)
    if unknown_functions:
        raise ConditionError(f"unknown function {', '.join(unknown_functions)}")
    condition = Condition(source, program)
    _trial(condition)
    return condition


def _trial(condition: Condition) -> None:
    """One evaluation against typed sample values: a type error that no step's inputs could fix is
    refused now. Errors that depend on the inputs (a key the sample has not) are left to decision time."""
    try:
        condition.holds(Variables(_SAMPLE))
    except ConditionError as error:
        if any(marker in str(error) for marker in _MISSING) or "KeyError" in str(error):
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
    return Variables({
        "principal": {"user": user, "groups": list(groups)},
        "namespace": namespace,
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
    })
