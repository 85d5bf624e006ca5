"""The watch of the Secrets of the operator's namespace (controller/operator/credentials.py), run against the
real API server on a namespace of its own: it follows Secrets appearing, changing keys and going, keeps
their key names only, and no value reaches a log line, even at debug level (`airun operator --verbose`)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable

import pytest
import yaml

from controller.capabilities.custom import Credentials
from controller.operator import kube as operator_kube
from controller.operator.credentials import CredentialWatch
from tests.integration.test_custom_capabilities import secret
from tests.kube import Kube


async def _until(check: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {within} s")
        await asyncio.sleep(0.1)


def test_the_watch_follows_the_secrets_and_logs_no_value_even_at_debug_level(
    kube: Kube, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    suffix = namespace.replace("t-", "")
    first, second = f"first-value-{suffix}-Jd8", f"second-value-{suffix}-Pw2"
    kube.apply(secret("endpoint", token=first, other=second), namespace=namespace)
    told: list[str] = []

    async def changed(name: str) -> None:
        told.append(name)

    async def main() -> None:
        connection = await operator_kube.connect(str(kube.kubeconfig), "admin" if kube.local else None)
        credentials = Credentials(namespace)
        watch = CredentialWatch(connection.api, credentials, changed)
        watch.start()
        try:
            await asyncio.wait_for(watch.listed.wait(), 20)
            assert credentials.keys == {"endpoint": frozenset({"token", "other"})}
            assert told == ["endpoint"]
            await asyncio.to_thread(kube.apply, secret("later", key=second), namespace=namespace)
            await _until(lambda: (credentials.keys or {}).get("later") == frozenset({"key"}), "Secret later")
            replaced = yaml.safe_dump(secret("endpoint", token=second))  # apply would keep the other key
            await asyncio.to_thread(kube.run, "replace", "-n", namespace, "-f", "-", stdin=replaced)
            await _until(lambda: (credentials.keys or {}).get("endpoint") == frozenset({"token"}), "one key less")
            await asyncio.to_thread(kube.run, "delete", "secret", "later", "-n", namespace)
            await _until(lambda: "later" not in (credentials.keys or {}), "Secret later gone")
            assert told == ["endpoint", "later", "endpoint", "later"]
        finally:
            await watch.stop()
            await connection.api.close()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # debug logging was on while it ran
    logged = caplog.text
    for value in (first, second):
        for form in (value, base64.b64encode(value.encode()).decode()):
            assert form not in logged, f"a Secret's value was logged: {form}"
