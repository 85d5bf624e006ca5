"""Step inputs are checked against the capability's JSON Schema before anything runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator


def validate_inputs(schema: Mapping[str, Any], inputs: Mapping[str, Any]) -> list[str]:
    """Every problem, each naming the input it concerns (empty when valid)."""
    validator = Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(dict(inputs)), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path)
        problems.append(f"{where}: {error.message}" if where else error.message)
    return problems
