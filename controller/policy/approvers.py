"""Who may decide an Approval (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


# -- quorum (approvers.count > 1): each person's decision is a vote, kept in spec.votes ---------------------

APPROVED, REJECTED = "Approved", "Rejected"
MAX_VOTES = 20


def quorum(approvers: Approvers | None) -> int:
    """How many distinct people must approve (1: the single-approver flow, no votes)."""
    return approvers.count if approvers is not None else 1


def outcome(votes: Sequence[Mapping[str, Any]], count: int) -> str:
    """The decision VOTES make: Rejected at the first rejection, Approved once COUNT distinct people
    approved, "" while neither."""
    if any(v.get("decision") == REJECTED for v in votes):
        return REJECTED
    approving = {v.get("user") for v in votes if v.get("decision") == APPROVED}
    return APPROVED if len(approving) >= count else ""


def tally(votes: Sequence[Mapping[str, Any]], count: int) -> str:
    """For people: "1 of 2 approvals (alice)", or who rejected."""
    rejected = [str(v.get("user")) for v in votes if v.get("decision") == REJECTED]
    if rejected:
        return f"rejected by {', '.join(rejected)}"
    approving = list(dict.fromkeys(str(v.get("user")) for v in votes if v.get("decision") == APPROVED))
    who = f" ({', '.join(approving)})" if approving else ""
    return f"{len(approving)} of {count} approvals{who}"


def vote_refusal(
    *,
    old_votes: Sequence[Mapping[str, Any]],
    new_votes: Sequence[Mapping[str, Any]],
    decision: str,
    count: int,
    requested_by: str,
    approvers: Approvers | None,
    user: str,
    groups: Sequence[str],
) -> str | None:
    """Why an update of a quorum Approval by USER must be refused, or None. The votes only grow, by at most
    one vote, USER's own, from a person who may decide and has not voted yet; spec.decision is always the
    outcome of the votes (a person votes by setting it: the admission webhook turns that into a vote)."""
    if list(new_votes[: len(old_votes)]) != list(old_votes) or len(new_votes) > len(old_votes) + 1:
        return "spec.votes only grow, one vote at a time: earlier votes cannot be changed or removed"
    if len(new_votes) > MAX_VOTES:
        return f"at most {MAX_VOTES} votes"
    if len(new_votes) == len(old_votes) + 1:
        vote = new_votes[-1]
        if vote.get("user") != user:
            return f"a vote is recorded under its voter's authenticated name ({user}), not {vote.get('user')!r}"
        if vote.get("decision") not in (APPROVED, REJECTED):
            return "a vote is Approved or Rejected"
        if any(v.get("user") == user for v in old_votes):
            return f"{user} has decided already: a quorum needs {count} distinct people"
        refusal = decision_refusal(requested_by=requested_by, approvers=approvers, user=user, groups=groups)
        if refusal:
            return refusal
    expected = outcome(new_votes, count)
    if decision != expected:
        return (
            f"spec.decision must be the outcome of the votes ({expected or 'pending'}: {tally(new_votes, count)}); "
            "vote by setting spec.decision"
        )
    return None


def quorum_text(spec: Mapping[str, Any]) -> str | None:
    """ "1 of 2 approvals (alice)" for a quorum Approval's SPEC, None for a single-approver one."""
    approvers = spec.get("approvers") or {}
    count = int(approvers.get("count") or 1) if isinstance(approvers, Mapping) else 1
    if count <= 1:
        return None
    return tally(list(spec.get("votes") or []), count)
