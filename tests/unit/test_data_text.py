"""data.* and text.* handlers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from controller.capabilities.base import CapabilityError, Invocation
from controller.capabilities.handlers.data import HANDLERS

INV = Invocation("ns", "wf", "s", "k", 1, Path("/nonexistent"))


def call(capability: str, **inputs: Any) -> dict[str, Any]:
    return asyncio.run(HANDLERS[capability](inputs, INV))


def test_json_parse_and_query() -> None:
    value = call("data.json.parse", text='{"items": [{"name": "a", "ready": true}, {"name": "b", "ready": false}]}')
    assert call("data.json.query", data=value["value"], expression="items[?ready].name") == {"result": ["a"]}
    with pytest.raises(CapabilityError, match="not JSON"):
        call("data.json.parse", text="{nope")
    with pytest.raises(CapabilityError, match="expression"):
        call("data.json.query", data={}, expression="items[?")


def test_text_render_is_sandboxed_and_strict() -> None:
    assert call("text.render", template="{{ name }}", values={"name": "db"}) == {"text": "db"}
    assert call("text.render", template="n={{ n + 1 }}", values={"n": 1}) == {"text": "n=2"}
    with pytest.raises(CapabilityError, match="'missing' is undefined"):
        call("text.render", template="{{ missing }}", values={})
    with pytest.raises(CapabilityError):
        call("text.render", template="{{ ''.__class__.__mro__ }}", values={})


def test_regex_extract() -> None:
    assert call("text.regex_extract", text="v1.2.3 and v2.0.0", pattern=r"v(\d+)\.\d+", group=1) == {
        "match": "1",
        "groups": {},
    }
    assert call("text.regex_extract", text="v1.2.3 and v2.0.0", pattern=r"v[\d.]+", all=True) == {
        "matches": ["v1.2.3", "v2.0.0"]
    }
    assert call("text.regex_extract", text="id=42", pattern=r"id=(?P<id>\d+)")["groups"] == {"id": "42"}
    with pytest.raises(CapabilityError, match="pattern"):
        call("text.regex_extract", text="x", pattern="(")
