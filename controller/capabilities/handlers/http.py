"""net.http.* handlers (httpx, async)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from controller.capabilities.base import CapabilityError, Handler, Invocation
from controller.capabilities.egress import EgressRefused, EgressRules, http_client

HIDDEN_HEADERS = {"set-cookie", "authorization", "proxy-authorization", "www-authenticate"}


async def _send(inputs: dict[str, Any], inv: Invocation, method: str) -> dict[str, Any]:
    rules = EgressRules.from_env()
    limit = int(inputs.get("maxResponseBytes", 1048576))
    headers = {str(k): str(v) for k, v in (inputs.get("headers") or {}).items()}
    headers.setdefault("Idempotency-Key", inv.idempotency_key)

    async def check(request: httpx.Request) -> None:  # every hop, redirects included
        await rules.check_url(str(request.url))

    kwargs: dict[str, Any] = {"headers": headers}
    if "json" in inputs:
        kwargs["json"] = inputs["json"]
    elif "body" in inputs:
        kwargs["content"] = inputs["body"].encode()
    url = inputs["url"]
    try:
        async with (
            http_client(
                rules,
                timeout=float(inputs.get("timeoutSeconds", 10)),
                follow_redirects=True,
                max_redirects=int(inputs.get("maxRedirects", 3)),
                event_hooks={"request": [check]},  # a clear refusal before anything is sent; connections check again
            ) as client,
            client.stream(method, url, **kwargs) as response,
        ):
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise CapabilityError(f"{method} {url}: response larger than {limit} bytes", retryable=False)
    except EgressRefused as refused:
        raise CapabilityError(f"{method} {url}: refused by the egress rules: {refused}", retryable=False) from refused
    except httpx.TooManyRedirects as error:
        raise CapabilityError(f"{method} {url}: too many redirects", retryable=False) from error
    except httpx.TimeoutException as error:
        raise CapabilityError(f"{method} {url}: timed out ({type(error).__name__})") from error
    except httpx.HTTPError as error:
        raise CapabilityError(f"{method} {url}: {type(error).__name__}: {error}") from error

    outputs: dict[str, Any] = {
        "status": response.status_code,
        "headers": {k: v for k, v in response.headers.items() if k.lower() not in HIDDEN_HEADERS},
    }
    text = body.decode(response.encoding or "utf-8", errors="replace")
    if "json" in response.headers.get("content-type", "") and body:
        try:
            outputs["json"] = json.loads(text)
        except json.JSONDecodeError:
            outputs["body"] = text
    else:
        outputs["body"] = text
    ok = response.is_success or response.status_code in (inputs.get("okStatus") or [])
    if not ok:
        retryable = response.status_code >= 500 or response.status_code in (408, 429)
        raise CapabilityError(f"{method} {url}: HTTP {response.status_code}: {text[:200]}", retryable=retryable)
    return outputs


async def call_endpoint(
    method: str,
    url: str,
    payload: dict[str, Any],
    inv: Invocation,
    *,
    timeout_seconds: float,
    sign_with: Callable[[bytes], dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A custom capability's endpoint: the rendered inputs as the JSON body. SIGN_WITH gives the headers
    that authenticate the operator for exactly these body bytes (so they are serialised here, once)."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    headers = {"Content-Type": "application/json", **(sign_with(body.encode()) if sign_with else {})}
    return await _send({"url": url, "body": body, "headers": headers, "timeoutSeconds": timeout_seconds}, inv, method)


async def get(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    return await _send(inputs, inv, "GET")


async def request(inputs: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    return await _send(inputs, inv, str(inputs.get("method", "POST")).upper())


HANDLERS: dict[str, Handler] = {"net.http.get": get, "net.http.request": request}
