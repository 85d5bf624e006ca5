"""Redaction hides secrets and only secrets: approvers must see what they approve."""

from __future__ import annotations

from typing import Any

import pytest

from controller.engine.redaction import HIDDEN, redact

REF = {"secretKeyRef": {"name": "db", "key": "password"}}

# (key, value, hidden?)
CASES: list[tuple[str, Any, bool]] = [
    # secret values
    ("password", "hunter2", True),
    ("passwd", "hunter2", True),
    ("dbPassword", "hunter2", True),
    ("DB_PASSWORD", "hunter2", True),
    ("token", "abc", True),
    ("accessToken", "abc", True),
    ("refresh_token", "abc", True),
    ("apiKey", "abc", True),
    ("api_key", "abc", True),
    ("APIKey", "abc", True),
    ("secret", "abc", True),
    ("clientSecret", "abc", True),
    ("client-secret", "abc", True),
    ("privateKey", "-----BEGIN", True),
    ("secretAccessKey", "abc", True),
    ("credentials", "user:pass", True),
    ("authorization", "Bearer abc", True),
    ("Authorization", "Bearer abc", True),
    ("Proxy-Authorization", "Basic abc", True),
    ("Cookie", "session=abc", True),
    ("Set-Cookie", "session=abc", True),
    ("X-Api-Key", "abc", True),
    ("X-Auth-Token", "abc", True),
    ("pin", 1234, True),
    ("password", 1234, True),
    ("tokens", ["a"], True),
    ("imagePullSecrets", [{"name": "registry"}], False),  # references by name stay visible
    # references to secrets and properties of secrets stay visible
    ("secretName", "db-credentials", False),
    ("secretRef", "db-credentials", False),
    ("tokenTtl", 3600, False),
    ("tokenUrl", "https://auth.example/token", False),
    ("passwordLength", 24, False),
    ("passwordPolicy", "strong", False),
    ("accessKeyId", "AKIA...", False),
    ("key", "reports/2026.csv", False),
    ("idempotencyKey", "wf.step.abc", False),
    ("path", "secrets/readme.txt", False),
    ("user", "alice", False),
    ("content", "my password is nothing", False),
    # never booleans, never absent values
    ("password", True, False),
    ("secret", False, False),
    ("token", None, False),
    # secret references stay references, under any key
    ("password", REF, False),
    ("token", REF, False),
]


@pytest.mark.parametrize(("key", "value", "hidden"), CASES)
def test_redaction_table(key: str, value: Any, hidden: bool) -> None:
    expected = ([HIDDEN] * len(value) if isinstance(value, list) else HIDDEN) if hidden else value
    assert redact({key: value}) == {key: expected}


def test_nested_structures_are_redacted_where_the_secret_is() -> None:
    inputs = {
        "headers": {"Authorization": "Bearer abc", "Accept": "application/json", "X-Api-Key": "k"},
        "json": {"credentials": {"username": "svc", "password": "p"}, "enabled": True},
        "env": [{"name": "DB_PASSWORD", "value": "p"}, {"name": "DB_HOST", "value": "db"}],
        "tokens": ["a"],
        "apiKeys": ["a"],
        "password": ["a", "b"],
    }
    assert redact(inputs) == {
        "headers": {"Authorization": HIDDEN, "Accept": "application/json", "X-Api-Key": HIDDEN},
        "json": {"credentials": {"username": "svc", "password": HIDDEN}, "enabled": True},
        "env": [{"name": "DB_PASSWORD", "value": HIDDEN}, {"name": "DB_HOST", "value": "db"}],
        "tokens": [HIDDEN],
        "apiKeys": [HIDDEN],
        "password": [HIDDEN, HIDDEN],
    }
    assert inputs["headers"]["Authorization"] == "Bearer abc"  # the inputs themselves are not changed


def test_a_secret_manifest_keeps_its_keys_and_hides_its_data() -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db"},
        "data": {"host": "ZGI=", "pw": "cA=="},
        "stringData": {"url": "postgres://u:p@db/x"},
    }
    assert redact({"manifest": manifest}) == {
        "manifest": {**manifest, "data": {"host": HIDDEN, "pw": HIDDEN}, "stringData": {"url": HIDDEN}}
    }
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"host": "db"}}
    assert redact({"manifest": config_map}) == {"manifest": config_map}
