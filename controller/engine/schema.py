"""Step inputs are checked against the capability's JSON Schema before anything runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator

SECRET_PLACEHOLDER = "<secret>"


def mask_secret_refs(value: Any) -> Any:
    """Secret references stand for strings: validate them as such (their values are never seen here)."""
    if isinstance(value, Mapping):
        if set(value) == {"secretKeyRef"}:
            return SECRET_PLACEHOLDER
        return {k: mask_secret_refs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secret_refs(v) for v in value]
    return value


def validate_inputs(schema: Mapping[str, Any], inputs: Mapping[str, Any]) -> list[str]:
    """Every problem, each naming the input it concerns (empty when valid)."""
    validator = Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(mask_secret_refs(dict(inputs))), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path)
        problems.append(f"{where}: {error.message}" if where else error.message)
    return problems
