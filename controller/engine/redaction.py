"""Redaction (pure): what an approver or the audit trail sees of a step's inputs.

It hides secret values and only those, so that people approve what will run, not `***`. A key names a
secret value when its last word is one (`password`, `apiToken`, `client_secret`, `X-Api-Key`,
`Authorization`); a key whose last word says it is a reference to a secret or a property of one
(`secretName`, `secretRef`, `tokenTtl`, `passwordLength`) stays visible. Secret references
(`{secretKeyRef: {name, key}}`) stay visible as references: the engine never holds secret values, but
authors sometimes inline one by mistake, and it must not reach an Approval or the audit store. Booleans
are never secrets; strings and numbers (a PIN) under a secret key are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

HIDDEN = "***"

# Last words of keys that name a secret value. "key" alone names too many things (an object key, an
# idempotency key): only with a qualifier before it (apiKey, privateKey, secret_key, accessKey).
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "auth",
        "bearer",
        "otp",
        "passphrase",
        "pwd",
        "pin",
        "secret",
        "token",
        "credential",
        "credentials",
        "authorization",
        "cookie",
        "apikey",
        "privatekey",
        "signature",
    }
)
_KEY_QUALIFIERS = frozenset({"api", "private", "secret", "access", "signing", "encryption", "client", "master"})
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# Containers whose `value` is secret when their `name` names a secret (env vars, header lists).
_NAME_KEYS = ("name", "key", "header")


def words(key: str) -> list[str]:
    """`clientSecret`, `client_secret`, `Client-Secret` and `CLIENT_SECRET` all give [client, secret]."""
    return [w.lower() for w in _WORDS.findall(key)]


def names_secret(key: str) -> bool:
    """Whether KEY names a secret value (not a reference to one, nor a property of one)."""
    parts = words(key)
    if not parts:
        return False
    last = parts[-1]
    if last.endswith("s") and last[:-1] in _SECRET_WORDS | {"key"}:
        last = last[:-1]  # tokens, apiKeys: each item is a secret (a reference or an object is still looked into)
    if last in _SECRET_WORDS:
        return True
    return last == "key" and len(parts) > 1 and parts[-2] in _KEY_QUALIFIERS


def redact(value: Any) -> Any:
    """VALUE with every secret value replaced by HIDDEN (a new object; VALUE is not changed)."""
    if isinstance(value, Mapping):
        if _is_secret_manifest(value):
            return {k: _hide_all(v) if k in ("data", "stringData") else redact(v) for k, v in value.items()}
        named = next((value[k] for k in _NAME_KEYS if isinstance(value.get(k), str)), None)
        hide_value = named is not None and names_secret(named)
        return {
            k: _hide(v) if (names_secret(str(k)) or (hide_value and k == "value")) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _hide(value: Any) -> Any:
    """A value under a secret key: scalars hidden, booleans kept, structures looked into (a secret
    reference stays, `credentials: {username, password}` keeps the username)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str | int | float):
        return HIDDEN
    if isinstance(value, list):
        return [_hide(v) for v in value]
    return redact(value)


def _hide_all(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _hide_all(v) for k, v in value.items()}
    return _hide(value)


def _is_secret_manifest(value: Mapping[str, Any]) -> bool:
    """A Kubernetes Secret (k8s.apply): every value of its data and stringData is secret."""
    return value.get("kind") == "Secret" and str(value.get("apiVersion", "v1")) == "v1"
