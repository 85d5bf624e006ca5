"""Jinja2 templates in step inputs, rendered in a sandbox with strict undefined: a reference to an
unknown value is an error naming it, never an empty string."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


class TemplateError(ValueError):
    pass


def render(value: Any, context: Mapping[str, Any], *, where: str = "inputs", keep_types: bool = True) -> Any:
    """Renders every string inside VALUE (dicts and lists are walked). With KEEP_TYPES a string that is
    exactly one expression, such as "{{ steps.a.outputs.count }}", keeps the type of its value."""
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return value
        try:
            stripped = value.strip()
            single = stripped.startswith("{{") and stripped.endswith("}}") and stripped.count("{{") == 1
            if keep_types and single:
                expression = _ENV.compile_expression(stripped[2:-2].strip(), undefined_to_none=False)
                result = expression(**context)
                if isinstance(result, jinja2.Undefined):
                    str(result)  # raises UndefinedError with the name of what is missing
                return result
            return _ENV.from_string(value).render(**context)
        except jinja2.UndefinedError as error:
            raise TemplateError(f"{where}: {error.message}") from error
        except jinja2.TemplateError as error:
            raise TemplateError(f"{where}: {error}") from error
    if isinstance(value, Mapping):
        return {k: render(v, context, where=f"{where}.{k}", keep_types=keep_types) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context, where=f"{where}[{i}]", keep_types=keep_types) for i, v in enumerate(value)]
    return value
