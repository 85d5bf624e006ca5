"""The pure shard decisions (controller.engine.shards): who takes, keeps and gives back which shard."""

from __future__ import annotations

from controller.engine.shards import (
    ABANDONED_AFTER,
    LeaseView,
    assignment,
    decide,
    live_replicas,
    preferred_replica,
    shard_of,
)

DURATION = 15.0


def held(by: str | None, unchanged_for: float = 1.0) -> LeaseView:
    return LeaseView(holder=by, unchanged_for=unchanged_for)


def test_a_uid_always_lands_on_the_same_shard_and_shards_are_even() -> None:
    assert shard_of("abc", 7) == shard_of("abc", 7)
    counts = [0, 0, 0]
    for i in range(3000):
        counts[shard_of(f"uid-{i}", 3)] += 1
    assert all(900 < c < 1100 for c in counts), counts


def test_rendezvous_moves_only_the_shards_of_a_replica_that_leaves() -> None:
    three = {s: preferred_replica(s, ["a", "b", "c"]) for s in range(60)}
    two = {s: preferred_replica(s, ["a", "c"]) for s in range(60)}
    assert {s for s in range(60) if three[s] != two[s]} == {s for s in range(60) if three[s] == "b"}
    assert set(three.values()) == {"a", "b", "c"}


def test_the_assignment_is_even_even_for_few_shards_and_stable() -> None:
    for count, replicas in ((4, ["r0", "r1", "r2"]), (6, ["r0", "r1", "r2"]), (16, ["x", "y", "z", "w", "v"])):
        owners = assignment(count, replicas)
        loads = [list(owners.values()).count(r) for r in replicas]
        assert max(loads) - min(loads) <= 1, (count, loads)
        assert assignment(count, list(reversed(replicas))) == owners  # whatever order they are seen in


def test_a_replica_that_leaves_moves_few_shards_besides_its_own() -> None:
    before = assignment(30, ["a", "b", "c"])
    after = assignment(30, ["a", "c"])
    moved = {s for s in range(30) if before[s] != after[s]}
    theirs = {s for s in range(30) if before[s] == "b"}
    assert theirs <= moved and len(moved - theirs) <= 5, (len(theirs), len(moved))


def test_alone_a_replica_takes_every_free_shard() -> None:
    decisions = decide("a", 4, {}, ["a"], DURATION)
    assert decisions.acquire == (0, 1, 2, 3) and decisions.release == ()


def test_a_shard_held_by_a_live_replica_is_never_taken() -> None:
    shards = {s: held("b") for s in range(4)}
    assert decide("a", 4, shards, ["a", "b"], DURATION).acquire == ()


def test_a_stale_shard_is_taken_by_the_replica_it_hashes_to() -> None:
    live = ["a", "c"]  # b died: its own Lease expired, and so do its shards
    shards = {s: held("b", unchanged_for=DURATION) for s in range(8)}
    a = decide("a", 8, shards, live, DURATION).acquire
    c = decide("c", 8, shards, live, DURATION).acquire
    assert set(a) | set(c) == set(range(8)) and not set(a) & set(c)


def test_a_shard_still_renewed_is_not_stale_even_if_its_holder_is_not_seen_live() -> None:
    shards = {0: held("b", unchanged_for=DURATION - 0.1)}
    assert decide("a", 1, shards, ["a"], DURATION).acquire == ()


def test_a_replica_gives_back_what_hashes_to_another_live_one() -> None:
    shards = {s: held("a") for s in range(6)}
    decisions = decide("a", 6, shards, ["a", "b"], DURATION, frozenset(range(6)))
    assert set(decisions.release) == {s for s, owner in assignment(6, ["a", "b"]).items() if owner == "b"}
    assert len(decisions.release) == 3
    assert decisions.acquire == ()


def test_a_free_shard_nobody_took_is_anyones_after_a_while() -> None:
    preferred_elsewhere = next(s for s, owner in assignment(20, ["a", "b"]).items() if owner == "b")
    fresh = {preferred_elsewhere: held(None, unchanged_for=DURATION)}
    assert preferred_elsewhere not in decide("a", 20, fresh, ["a", "b"], DURATION).acquire
    abandoned = {preferred_elsewhere: held(None, unchanged_for=ABANDONED_AFTER * DURATION)}
    assert preferred_elsewhere in decide("a", 20, abandoned, ["a", "b"], DURATION).acquire


def test_live_replicas_are_those_renewed_within_a_duration() -> None:
    members = {"b": held("b", 2.0), "c": held("c", DURATION + 1), "d": held(None, 1.0)}
    assert live_replicas("a", members, DURATION) == ["a", "b"]


def test_a_restarted_process_takes_back_the_shards_of_its_identity_at_once() -> None:
    shards = {s: held("a", unchanged_for=0.5) for s in range(3)}
    assert decide("a", 3, shards, ["a"], DURATION, held=frozenset()).acquire == (0, 1, 2)
    assert decide("a", 3, shards, ["a"], DURATION, held=frozenset({0, 1, 2})).acquire == ()
