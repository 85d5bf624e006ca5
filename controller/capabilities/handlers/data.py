"""data.* and text.* handlers: pure transformations."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import jmespath
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
    try:
        text = render(inputs["template"], dict(inputs.get("values") or {}), where="template", keep_types=False)
    except TemplateError as error:
        raise CapabilityError(str(error), retryable=False) from error
    return {"text": str(text)}


def _regex(inputs: dict[str, Any]) -> dict[str, Any]:
    try:
        pattern = re.compile(inputs["pattern"])
    except re.error as error:
        raise CapabilityError(f"pattern: {error}", retryable=False) from error
    group = inputs.get("group", 0)
    try:
        if inputs.get("all"):
            return {"matches": [m.group(group) for m in pattern.finditer(inputs["text"])]}
        found = pattern.search(inputs["text"])
        if found is None:
            return {"match": None, "groups": {}}
        return {"match": found.group(group), "groups": found.groupdict()}
    except (IndexError, re.error) as error:
        raise CapabilityError(f"group {group!r}: {error}", retryable=False) from error


async def regex_extract(inputs: dict[str, Any], _: Invocation) -> dict[str, Any]:
    return await asyncio.to_thread(_regex, inputs)


HANDLERS: dict[str, Handler] = {
    "data.json.parse": parse,
    "data.json.query": query,
    "text.render": render_text,
    "text.regex_extract": regex_extract,
}
