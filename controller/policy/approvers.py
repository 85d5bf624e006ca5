"""Who may decide an Approval (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from controller.api.policy import Approvers


def decision_refusal(*, requested_by: str, approvers: Approvers | None, user: str, groups: Sequence[str]) -> str | None:
    """Why USER may not decide this approval, or None when they may. Nobody decides their own request;
    when the policy rule names approvers, only they may decide."""
    if requested_by and user == requested_by:
        return f"{user} requested this approval and cannot decide it: someone else must (no self-approval)"
    if approvers is not None and (approvers.users or approvers.groups):
        if user in approvers.users or set(groups) & set(approvers.groups):
            return None
        named = []
        if approvers.users:
            named.append("users " + ", ".join(approvers.users))
        if approvers.groups:
            named.append("groups " + ", ".join(approvers.groups))
        return f"{user} is not among the approvers the policy names ({'; '.join(named)})"
    return None
