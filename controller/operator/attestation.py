"""The admission webhook's signature on the principal it recorded.

The mutating webhook writes the creator of a Workflow into annotations; annotations are written by anyone
who may create a Workflow, so the operator must be able to tell the webhook's annotations from an author's
(the webhook configurations may have been deleted, or the operator started without them). The webhook
signs what it wrote with a key only the operator holds: HMAC-SHA256 over the namespace, the name, the
user, the groups (a JSON list, never a joined string: a group may contain a comma) and the instant it
signed. The runtime runs a workflow only if the signature verifies and that instant is within
MAX_SKEW of the object's creationTimestamp, so copying another workflow's annotations gains nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller.api.metadata import ATTESTATION_ANNOTATION, GROUPS_ANNOTATION, PRINCIPAL_ANNOTATION
from controller.api.policy import Principal

VERSION = "v1"
MAX_SKEW = timedelta(minutes=3)
log = logging.getLogger("airun.attestation")


def load_key(path: str | None) -> bytes:
    """The key of --attestation-key-file (shared by all replicas, kept across restarts); without one, a
    throw-away key: workflows admitted before a restart then no longer verify."""
    if path:
        key = Path(path).read_bytes().strip()
        if len(key) < 32:
            raise ValueError(f"{path}: an attestation key needs at least 32 bytes")
        return key
    log.warning("no --attestation-key-file: principals are attested with a throw-away key (lost on restart)")
    return secrets.token_bytes(32)


def encode_groups(groups: Sequence[str]) -> str:
    return json.dumps(list(groups), separators=(",", ":"))


def decode_groups(text: str | None) -> list[str] | None:
    """The groups of GROUPS_ANNOTATION, or None when it is not a JSON list of strings."""
    try:
        value = json.loads(text or "")
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        return None
    return value


def _mac(key: bytes, namespace: str, name: str, user: str, groups_json: str, signed_at: int) -> str:
    message = json.dumps([VERSION, namespace, name, user, groups_json, signed_at], separators=(",", ":"))
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def attest(key: bytes, namespace: str, name: str, user: str, groups: Sequence[str], at: datetime) -> dict[str, str]:
    """The annotations the webhook writes: principal, groups and their signature. NAME is the object's
    name (the webhook gives every new Workflow one, so a signature never covers a generateName prefix)."""
    groups_json = encode_groups(groups)
    signed_at = int(at.timestamp())
    return {
        PRINCIPAL_ANNOTATION: user,
        GROUPS_ANNOTATION: groups_json,
        ATTESTATION_ANNOTATION: f"{VERSION}.{signed_at}.{_mac(key, namespace, name, user, groups_json, signed_at)}",
    }


def verified(key: bytes, body: Mapping[str, Any]) -> Principal | None:
    """The principal the webhook attested on BODY, or None when nothing verifies."""
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    user = annotations.get(PRINCIPAL_ANNOTATION)
    groups_json = annotations.get(GROUPS_ANNOTATION)
    version, _, rest = str(annotations.get(ATTESTATION_ANNOTATION) or "").partition(".")
    stamp, _, mac = rest.partition(".")
    if version != VERSION or not user or groups_json is None or not stamp.isdigit():
        return None
    groups = decode_groups(groups_json)
    if groups is None:
        return None
    expected = _mac(key, str(meta.get("namespace") or ""), str(meta.get("name") or ""), user, groups_json, int(stamp))
    if not hmac.compare_digest(expected, mac):
        return None
    created = meta.get("creationTimestamp")
    try:
        created_at = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return None
    signed_at = datetime.fromtimestamp(int(stamp), UTC)
    if abs(created_at - signed_at) > MAX_SKEW:
        return None
    return Principal(user=user, groups=groups)
