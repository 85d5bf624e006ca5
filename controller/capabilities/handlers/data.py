"""data.* and text.* handlers: pure transformations."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import jmespath
import re2
from jmespath.exceptions import JMESPathError

from controller.capabilities.base import CapabilityError, Handler, Invocation
from controller.engine.templating import TemplateError, render


async def parse(inputs: dict[str, Any], _: Invocation) -> dict[str, Any]:
    try:
        return {"value": json.loads(inputs["text"])}
    except json.JSONDecodeError as error:
        raise CapabilityError(f"text is not JSON: {error}", retryable=False) from error


async def query(inputs: dict[str, Any], _: Invocation) -> dict[str, Any]:
    try:
        return {"result": jmespath.search(inputs["expression"], inputs["data"])}
    except JMESPathError as error:
        raise CapabilityError(f"expression: {error}", retryable=False) from error


async def render_text(inputs: dict[str, Any], _: Invocation) -> dict[str, Any]:
    # The same bounded renderer as step inputs: a template that only reads values renders here, anything
    # else in the isolated renderer's worker processes (time limit, output cap), which blocks: a thread.
    try:
        text = await asyncio.to_thread(
            render, inputs["template"], dict(inputs.get("values") or {}), where="template", keep_types=False
        )
    except TemplateError as error:
        raise CapabilityError(str(error), retryable=False) from error
    return {"text": str(text)}


MAX_PATTERN = 1024  # characters; the capability's schema says the same
MAX_TEXT = 1024 * 1024
MAX_MATCHES = 10000
RE2_MEMORY = 8 * 1024 * 1024  # bytes RE2 may use for one compiled pattern


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.max_mem = RE2_MEMORY
    options.log_errors = False  # the error is the step's, not the operator's log's
    return options


def _regex(inputs: dict[str, Any]) -> dict[str, Any]:
    """RE2, not Python's backtracking `re`: matching is linear in the text, whatever the author's pattern
    (no catastrophic backtracking), so neither time nor memory depends on the pattern's shape."""
    pattern_text, text = inputs["pattern"], inputs["text"]
    if len(pattern_text) > MAX_PATTERN:
        raise CapabilityError(f"pattern: longer than {MAX_PATTERN} characters", retryable=False)
    if len(text) > MAX_TEXT:
        raise CapabilityError(f"text: longer than {MAX_TEXT} characters", retryable=False)
    try:
        pattern = re2.compile(pattern_text, _re2_options())
    except re2.error as error:
        reason = error.args[0].decode(errors="replace") if error.args and isinstance(error.args[0], bytes) else error
        raise CapabilityError(
            f"pattern: {reason} (RE2 syntax: no backreferences or lookaround)", retryable=False
        ) from error
    group = inputs.get("group", 0)
    try:
        if inputs.get("all"):
            return {"matches": [m.group(group) for m in itertools.islice(pattern.finditer(text), MAX_MATCHES)]}
        found = pattern.search(text)
        if found is None:
            return {"match": None, "groups": {}}
        return {"match": found.group(group), "groups": found.groupdict()}
    except (IndexError, re2.error) as error:
        raise CapabilityError(f"group {group!r}: {error}", retryable=False) from error


async def regex_extract(inputs: dict[str, Any], _: Invocation) -> dict[str, Any]:
    return await asyncio.to_thread(_regex, inputs)


HANDLERS: dict[str, Handler] = {
    "data.json.parse": parse,
    "data.json.query": query,
    "text.render": render_text,
    "text.regex_extract": regex_extract,
}
