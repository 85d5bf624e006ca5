"""Secret references in step inputs: `{secretKeyRef: {name, key}}` becomes the value of that key of a
Secret in the workflow's namespace, read as the workflow's principal (impersonation), so a workflow can
only use the secrets its author may read.

A reference is resolved only at a position (path) where the spec wrote one: rendering can bring data
shaped like a reference (a remote API's answer, passed on by a template), and that stays data. Every
resolved value (and its obvious encodings) is scrubbed from the call's outputs, errors and log lines, so
an API that echoes its request cannot carry a secret into status, events or the audit store."""

from __future__ import annotations

import base64
import contextvars
import copy
import json
import logging
import re
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from controller.capabilities.base import CapabilityError, Invocation
from controller.capabilities.handlers.k8s import KubeGateway

MASK = "***"
Path = tuple[str | int, ...]


def _is_ref(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"secretKeyRef"} and isinstance(value["secretKeyRef"], Mapping)


def has_refs(value: Any) -> bool:
    if _is_ref(value):
        return True
    if isinstance(value, Mapping):
        return any(has_refs(v) for v in value.values())
    if isinstance(value, list):
        return any(has_refs(v) for v in value)
    return False


def ref_paths(template: Any, at: Path = ()) -> list[Path]:
    """Where TEMPLATE (spec inputs, before rendering) holds a secret reference. Pure."""
    if _is_ref(template):
        return [at]
    if isinstance(template, Mapping):
        return [p for k, v in template.items() for p in ref_paths(v, (*at, str(k)))]
    if isinstance(template, list):
        return [p for i, v in enumerate(template) for p in ref_paths(v, (*at, i))]
    return []


@dataclass(frozen=True)
class Resolved:
    inputs: dict[str, Any]
    scrubber: Scrubber


async def resolve(inputs: Mapping[str, Any], inv: Invocation, paths: Iterable[Path]) -> Resolved:
    """INPUTS (a copy) with the secret reference at each of PATHS replaced by its value; a reference
    anywhere else is left as it is (data). The scrubber knows every value resolved."""
    resolved: dict[str, Any] = copy.deepcopy(dict(inputs))
    cache: dict[str, dict[str, str]] = {}
    values: list[str] = []

    async def value_of(ref: Mapping[str, Any]) -> str:
        name, key = str(ref.get("name", "")), str(ref.get("key", ""))
        if name not in cache:
            if not isinstance(inv.kube, KubeGateway):
                raise CapabilityError("secret references need the operator's API connection", retryable=False)
            response = await inv.kube.call(inv, "GET", f"/api/v1/namespaces/{inv.namespace}/secrets/{name}")
            if response.status_code != 200:
                message = response.json().get("message", response.text) if response.content else response.text
                raise CapabilityError(f"secret {name}: {message}", retryable=response.status_code >= 500)
            cache[name] = response.json().get("data") or {}
        if key not in cache[name]:
            raise CapabilityError(f"secret {name} has no key {key!r}", retryable=False)
        return base64.b64decode(cache[name][key]).decode()

    for path in paths:
        if not path:
            continue  # inputs are a mapping; a reference cannot be all of them
        parent: Any = resolved
        for part in path[:-1]:
            parent = _child(parent, part)
        last = path[-1]
        if _is_ref(_child(parent, last)):
            value = await value_of(parent[last]["secretKeyRef"])
            parent[last] = value
            values.append(value)
    return Resolved(resolved, Scrubber(values))


def _child(container: Any, part: str | int) -> Any:
    if isinstance(container, dict) and isinstance(part, str):
        return container.get(part)
    if isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container):
        return container[part]
    return None


class Scrubber:
    """Replaces secret values, and the forms they travel in (base64, URL and JSON escaping), by `***`."""

    def __init__(self, values: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in values:
            if not value:
                continue
            raw = value.encode()
            b64 = base64.b64encode(raw).decode()
            urlsafe = base64.urlsafe_b64encode(raw).decode()
            forms |= {value, b64, b64.rstrip("="), urlsafe, urlsafe.rstrip("="), quote(value, safe="")}
            forms.add(json.dumps(value)[1:-1])
        forms.discard("")
        # Longest first, so that a form containing another is replaced whole.
        self._pattern = (
            re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))) if forms else None
        )

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, value: str) -> str:
        return self._pattern.sub(MASK, value) if self._pattern is not None else value

    def __call__(self, value: Any) -> Any:
        """VALUE with every secret hidden, deep through mappings, lists and strings (keys included)."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self(k): self(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        return value


_current: contextvars.ContextVar[Scrubber | None] = contextvars.ContextVar("airun_secret_scrubber", default=None)


@contextmanager
def scrubbing_logs(scrubber: Scrubber) -> Iterator[None]:
    """Log lines written by this task (a step's call) while inside have SCRUBBER applied."""
    token = _current.set(scrubber)
    try:
        yield
    finally:
        _current.reset(token)


class ScrubLogFilter(logging.Filter):
    """A handler filter: hides the secret values of the call that logs (see scrubbing_logs). The message
    and its traceback become one scrubbed text, since a traceback's frames can show the values too."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrubber = _current.get()
        if not scrubber:
            return True
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info))
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = scrubber.text(message), None
        return True
