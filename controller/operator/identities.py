"""What the admission webhooks of Workflows and Transactions share (controller/operator/admission.py imports
transactions.py, so it lives in neither): who sent the request, as the API server authenticated it, and
the refusal of an update that changes the identity recorded at creation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from controller.api.metadata import IDENTITY_ANNOTATIONS


def user_of(userinfo: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(user name, groups) of an admission request's userinfo."""
    return str(userinfo.get("username", "")), [str(g) for g in userinfo.get("groups") or []]


def identity_change(old: Mapping[str, Any], new: Mapping[str, Any], recorded: str) -> kopf.AdmissionError | None:
    """The refusal of an update from OLD to NEW that changes (or removes) one of the identity annotations, which
    the webhook recorded and signed when RECORDED ("the workflow is created", "the transaction is begun")."""
    before = ((old.get("metadata") or {}).get("annotations")) or {}
    after = ((new.get("metadata") or {}).get("annotations")) or {}
    for key in IDENTITY_ANNOTATIONS:
        if before.get(key) != after.get(key):
            return kopf.AdmissionError(
                f"metadata.annotations[{key}] is recorded from the API server's authentication when {recorded} "
                "and cannot be changed",
                code=403,
            )
    return None
