"""Which operator replica runs which workflow (DESIGN section 7): pure decisions over Leases.

Workflows are split into a fixed number of shards by a hash of their uid. Each shard is a
`coordination.k8s.io` Lease; the replica that holds it runs the shard's workflows. Each replica also keeps a
Lease of its own while it lives (membership), so that every replica knows who else is there. Shards are
spread over the live replicas by rendezvous hashing capped at a fair share: every replica computes the
same spread from the same Leases, and when a replica joins or leaves few shards move besides its own.

Time here is what a replica observed, never the clocks written in the Leases: a Lease is stale when the
replica has seen no change of it (no new resourceVersion) for a whole lease duration, as client-go's
leader election does, so no two machines' clocks are compared.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# A free shard that its preferred replica did not take within this many lease durations is anyone's: the
# preferred one may be stuck, and a shard nobody runs would stall its workflows.
ABANDONED_AFTER = 2.0


def shard_of(uid: str, count: int) -> int:
    """The shard of the object with UID, out of COUNT (stable across processes and restarts)."""
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big") % count


def _rank(replica: str, shard: int) -> bytes:
    return hashlib.sha256(f"{replica}/{shard}".encode()).digest()


def preferred_replica(shard: int, replicas: Iterable[str]) -> str | None:
    """Rendezvous hashing: the replica with the highest hash of (replica, shard)."""
    return max(replicas, key=lambda r: _rank(r, shard), default=None)


def assignment(count: int, replicas: Iterable[str]) -> dict[int, str]:
    """Which replica each of COUNT shards belongs to: by rendezvous hashing, but no replica gets more than
    its fair share (loads differ by one at most), so that a few shards still spread evenly. The same
    replicas always give the same assignment; one that leaves moves its own shards and few others."""
    names = sorted(set(replicas))
    if not names:
        return {}
    base, extra = divmod(count, len(names))  # every replica gets BASE shards, EXTRA of them one more
    load = dict.fromkeys(names, 0)
    owners: dict[int, str] = {}

    def room(replica: str) -> bool:
        return load[replica] < base or (load[replica] == base and sum(n > base for n in load.values()) < extra)

    for shard in range(count):
        ranked = sorted(names, key=lambda r: _rank(r, shard), reverse=True)
        owner = next(r for r in ranked if room(r))
        owners[shard] = owner
        load[owner] += 1
    return owners


@dataclass(frozen=True)
class LeaseView:
    """A Lease as one replica sees it: who holds it, and how long ago this replica saw it change."""

    holder: str | None
    unchanged_for: float  # seconds since this replica last saw a new resourceVersion of it


@dataclass(frozen=True)
class ShardDecisions:
    acquire: tuple[int, ...]
    release: tuple[int, ...]


def live_replicas(me: str, members: Mapping[str, LeaseView], duration: float) -> list[str]:
    """The replicas whose own Lease was renewed within a lease duration, and this one."""
    alive = {m for m, lease in members.items() if lease.holder and lease.unchanged_for < duration}
    return sorted(alive | {me})


def decide(
    me: str,
    count: int,
    shards: Mapping[int, LeaseView],
    replicas: Iterable[str],
    duration: float,
    held: frozenset[int] = frozenset(),
) -> ShardDecisions:
    """What replica ME does with each of COUNT shards, given the shard Leases it sees (a shard whose Lease
    does not exist yet is free, and fresh) and the live REPLICAS: it takes the free or stale shards
    assigned to it, and any shard left free or stale for ABANDONED_AFTER durations; it gives back the
    shards assigned to another live replica (that one takes them at once). HELD: the shards this process
    holds; a Lease in ME's name that it does not hold is an earlier process's of the same identity (a
    container restarted in its Pod), taken back at once."""
    owners = assignment(count, set(replicas) | {me})
    acquire: list[int] = []
    release: list[int] = []
    for shard in range(count):
        lease = shards.get(shard, LeaseView(holder=None, unchanged_for=0.0))
        preferred = owners[shard]
        if lease.holder == me:
            if shard not in held:
                acquire.append(shard)
            elif preferred != me:
                release.append(shard)
            continue
        stale = lease.unchanged_for >= duration
        free = lease.holder is None or stale
        abandoned = lease.unchanged_for >= ABANDONED_AFTER * duration
        if (free and preferred == me) or abandoned:
            acquire.append(shard)
    return ShardDecisions(tuple(acquire), tuple(release))
