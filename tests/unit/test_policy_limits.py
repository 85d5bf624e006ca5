"""Rate limits and breakers (pure): which limits count a step, what a window allows, when a breaker opens."""

from __future__ import annotations

from controller.api.policy import Breaker, Limit, PolicyObject, PolicySpec, Principal
from controller.policy.approvers import outcome, tally, vote_refusal
from controller.policy.limits import admit, breakers_for, digest, limits_for, opens, release

LIMIT = Limit(principal="system:serviceaccount:agents:*", capabilities=["net.http.*"], max=2, perSeconds=60)
AGENT = Principal(user="system:serviceaccount:agents:a")


def test_a_window_allows_max_steps_then_says_when_it_frees() -> None:
    first = admit([], LIMIT, 100.0, "k1")
    assert first.allowed and first.entries == [(100.0, digest("k1"))]
    second = admit(first.entries or [], LIMIT, 110.0, "k2")
    assert second.allowed and second.entries is not None
    third = admit(second.entries, LIMIT, 120.0, "k3")
    assert not third.allowed and third.retry_after == 40.0
    later = admit(second.entries, LIMIT, 161.0, "k3")  # the first left the window
    assert later.allowed and [d for _, d in later.entries or []] == [digest("k2"), digest("k3")]


def test_a_step_counted_before_is_not_counted_again() -> None:
    entries = admit([], LIMIT, 100.0, "k1").entries or []
    again = admit(entries, LIMIT, 101.0, "k1")
    assert again.allowed and again.entries is None  # nothing to write
    assert release(entries, "k1") == [] and release(entries, "other") is None


def test_limits_count_each_matching_principal_on_matching_capabilities_in_enforce_policies() -> None:
    spec = PolicySpec.model_validate({"limits": [LIMIT.model_dump(by_alias=True)]})
    enforce = PolicyObject(name="p", namespace="agents", spec=spec)
    audit = PolicyObject(name="a", spec=spec.model_copy(update={"mode": "Audit"}))
    assert [a.principal for a in limits_for([enforce, audit], AGENT, "agents", "net.http.get")] == [AGENT.user]
    assert limits_for([enforce], AGENT, "agents", "io.fs.delete") == []
    assert limits_for([enforce], AGENT, "other", "net.http.get") == []
    assert limits_for([enforce], Principal(user="bob"), "agents", "net.http.get") == []
    one, two = (
        limits_for([enforce], Principal(user=f"system:serviceaccount:agents:{x}"), "agents", "net.http.get")[0]
        for x in "ab"
    )
    assert one.name != two.name  # counted apart


def test_a_breaker_opens_at_its_count_within_its_window() -> None:
    breaker = Breaker(denials=3, perSeconds=60)
    assert not opens([10.0, 20.0], breaker, 30.0)
    assert opens([10.0, 20.0, 30.0], breaker, 30.0)
    assert not opens([10.0, 20.0, 30.0], breaker, 75.0)
    spec = PolicySpec.model_validate({"breaker": {"denials": 3, "perSeconds": 60}})
    assert [b.policy for b in breakers_for([PolicyObject(name="c", spec=spec)], "x")] == ["ClusterPolicy c"]


def test_votes_decide_at_the_quorum_or_the_first_rejection() -> None:
    approve = [{"user": "a", "decision": "Approved"}, {"user": "a", "decision": "Approved"}]
    assert outcome(approve, 2) == ""  # one person twice is one approval
    assert outcome([*approve[:1], {"user": "b", "decision": "Approved"}], 2) == "Approved"
    assert outcome([*approve[:1], {"user": "b", "decision": "Rejected"}], 2) == "Rejected"
    assert tally(approve[:1], 2) == "1 of 2 approvals (a)"


def test_a_vote_is_refused_unless_it_is_the_voters_own_first_and_allowed() -> None:
    from controller.api.policy import Approvers

    base = {"count": 2, "requested_by": "req", "approvers": Approvers(groups=["sre"], count=2), "groups": ["sre"]}
    carol = {"user": "carol", "decision": "Approved"}
    assert vote_refusal(old_votes=[], new_votes=[carol], decision="", user="carol", **base) is None  # type: ignore[arg-type]
    assert "not 'carol'" in (vote_refusal(old_votes=[], new_votes=[carol], decision="", user="dave", **base) or "")  # type: ignore[arg-type]
    assert "decided already" in (
        vote_refusal(old_votes=[carol], new_votes=[carol, carol], decision="", user="carol", **base) or ""  # type: ignore[arg-type]
    )
    assert "only grow" in (vote_refusal(old_votes=[carol], new_votes=[], decision="", user="dave", **base) or "")  # type: ignore[arg-type]
    assert "outcome of the votes" in (
        vote_refusal(old_votes=[], new_votes=[carol], decision="Approved", user="carol", **base) or ""  # type: ignore[arg-type]
    )
    req = {"user": "req", "decision": "Approved"}
    assert "cannot decide" in (vote_refusal(old_votes=[], new_votes=[req], decision="", user="req", **base) or "")  # type: ignore[arg-type]
